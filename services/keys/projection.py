"""keys' projection: key events into keys.keys, suspensions into keys.access, and last use from
usage, one row update per key per batch however often the key was used in it (writes are
coalesced, not per call).

Last use counts only usage of the key's own account (ingest clients name key ids freely)
that comes after the key's creation in the log, whatever the batch boundaries: a rebuild
in batches of any size gives the same table as the live projection did.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.projection import AfterCommit, Applied
from proto.v1 import AccountSuspended, AccountUnsuspended, KeyCreated, KeyRevoked, KeyRotated, UsageRecorded
from services.keys.domain import AccessEvent, KeyEvent
from services.keys.registry import KeyRegistry


@dataclass(slots=True)
class KeysBatch:
    conn: asyncpg.Connection
    key_events: list[KeyEvent] = field(default_factory=list)
    access_events: list[AccessEvent] = field(default_factory=list)
    last_used: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """Latest use by (key, account)."""


class KeysProjection(EventHandlers[KeysBatch]):
    name: str = "keys"
    category: str | None = None
    tables: tuple[str, ...] = ("checkpoints", "keys", "access")

    def __init__(self, registry: KeyRegistry, schema: str = "keys") -> None:
        self.registry = registry
        self.schema = schema

    def rebuilt_into(self, schema: str) -> "KeysProjection":
        return KeysProjection(KeyRegistry(), schema)

    async def reload(self, conn: asyncpg.Connection) -> None:
        await self.registry.load(conn, self.schema)

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        b = KeysBatch(conn)
        await self.dispatch(b, batch)
        last_used = b.last_used
        if last_used:
            await conn.execute(
                f"""UPDATE {self.schema}.keys AS k SET last_used_at = greatest(k.last_used_at, u.at)
                    FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(key_id, account_id, at)
                    WHERE k.key_id = u.key_id AND k.account_id = u.account_id""",
                [k for k, _ in last_used], [a for _, a in last_used], list(last_used.values()),
            )  # fmt: skip

        def after_commit() -> None:
            for event in b.key_events:
                self.registry.apply(event)
            for access_event in b.access_events:
                self.registry.apply_access(access_event)
            for (key_id, account_id), at in last_used.items():
                self.registry.used(key_id, account_id, at)

        return after_commit

    @handles(UsageRecorded)
    async def _used(self, b: KeysBatch, _seq: int, event: UsageRecorded) -> None:
        used = (event.key_id, event.account_id) if event.key_id else None
        if used and (used not in b.last_used or event.occurred_at > b.last_used[used]):
            b.last_used[used] = event.occurred_at

    @handles(KeyCreated)
    async def _created(self, b: KeysBatch, _seq: int, event: KeyCreated) -> None:
        created = await b.conn.fetchval(
            f"""INSERT INTO {self.schema}.keys (key_id, account_id, name, kind, prefix, last4, key_hash, created_at,
                                                applied_events)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ARRAY[$9]) ON CONFLICT (key_id) DO NOTHING
                RETURNING true""",
            event.key_id, event.account_id, event.name, event.kind, event.prefix, event.last4,
            event.key_hash, event.occurred_at, event.event_id,
        )  # fmt: skip
        if created:  # use logged before the key existed is not its use, in any batching
            b.last_used.pop((event.key_id, event.account_id), None)
        b.key_events.append(event)

    @handles(KeyRotated)
    async def _rotated(self, b: KeysBatch, _seq: int, event: KeyRotated) -> None:
        await b.conn.execute(
            f"""UPDATE {self.schema}.keys SET key_hash = $2, last4 = $3, rotated_at = $4,
                       applied_events = applied_events || $5
                WHERE key_id = $1 AND NOT ($5 = ANY(applied_events))""",
            event.key_id, event.key_hash, event.last4, event.occurred_at, event.event_id,
        )  # fmt: skip
        b.key_events.append(event)

    @handles(KeyRevoked)
    async def _revoked(self, b: KeysBatch, _seq: int, event: KeyRevoked) -> None:
        await b.conn.execute(
            f"""UPDATE {self.schema}.keys SET revoked_at = $2, applied_events = applied_events || $3
                WHERE key_id = $1 AND NOT ($3 = ANY(applied_events))""",
            event.key_id, event.occurred_at, event.event_id,
        )  # fmt: skip
        b.key_events.append(event)

    @handles(AccountSuspended, AccountUnsuspended)
    async def _access(self, b: KeysBatch, _seq: int, event: AccountSuspended | AccountUnsuspended) -> None:
        await b.conn.execute(
            f"""INSERT INTO {self.schema}.access AS a (account_id, suspended, since, applied_events)
                VALUES ($1, $2, $3, ARRAY[$4]) ON CONFLICT (account_id) DO UPDATE
                SET suspended = $2, since = $3, applied_events = a.applied_events || $4
                WHERE NOT ($4 = ANY(a.applied_events))""",
            event.account_id, isinstance(event, AccountSuspended), event.occurred_at, event.event_id,
        )  # fmt: skip
        b.access_events.append(event)
