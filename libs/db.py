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
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a pooled connection left in a bad state by a server that went away
)
"""What a request may meet when Postgres is down or restarting: answer 503, retry."""


async def create_pool(database_url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


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
