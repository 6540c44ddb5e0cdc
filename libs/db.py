"""Postgres: connection pools and plain-SQL migrations (yoyo), applied in order and recorded."""

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown: a server going away
    asyncpg.InsufficientResourcesError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a pooled connection left in a bad state by a server that went away
)
"""What a request may meet when Postgres is down, restarting or busy: answer 503, retry. Not a data
error (a value Postgres refuses, asyncpg.DataError and the other PostgresErrors): a retry would fail
the same way, so that is the client's 4xx, caught before, or a 500 with a request id."""


async def create_pool(database_url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections go back without asyncpg's reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL: one more round trip and four statements for Postgres on every release,
    4-17 µs per event of a projection's small batches, docs/performance.md). Nothing here leaves
    session state on a pooled connection: settings are SET LOCAL, cursors live in transactions,
    advisory locks are transaction-scoped (a replay's session lock has a connection of its own). An
    open transaction is still rolled back on release (asyncpg does that before any `reset`)."""
    pool = await asyncpg.create_pool(
        database_url, min_size=min_size, max_size=max_size, command_timeout=30, reset=_no_session_state
    )
    assert pool is not None
    return pool


async def _no_session_state(_: asyncpg.Connection) -> None:
    """The pool's reset, after asyncpg's own rollback of an open transaction: nothing to undo."""


def _yoyo_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def ensure_database(database_url: str) -> None:
    """Create the database named in the URL when it does not exist yet."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def migrate(database_url: str, migrations_dir: Path) -> list[str]:
    """Apply the folder's pending migrations under yoyo's lock; return the ids applied."""
    backend = get_backend(_yoyo_url(database_url))
    migrations = read_migrations(str(migrations_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


async def migrate_async(database_url: str, migrations_dir: Path) -> list[str]:
    return await asyncio.to_thread(migrate, database_url, migrations_dir)


def grant_read_only(database_url: str, role: str, password: str, schemas: list[str]) -> list[str]:
    """Give `role` (a login role, created when missing, its password kept in step) SELECT on the
    schemas' tables, today's and those later migrations create. Returns the schemas granted."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = sql.Identifier(role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = sql.SQL("ALTER" if exists else "CREATE")
        conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, name, sql.Literal(password)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), name))
        found = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,))
        present = [row[0] for row in found]
        for schema in present:
            where = sql.Identifier(schema)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(where, name))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(where, name))
            conn.execute(
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(where, name)
            )
        return sorted(present)
