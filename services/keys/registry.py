"""Every key in memory, by id and by the hash of its current secret, and which accounts are
suspended: key.lookup reads here."""

import dataclasses
import gc
from datetime import datetime
from typing import cast

import asyncpg
import msgspec

from proto.v1 import KeyView
from proto.v1.events import KeyKind
from services.keys.domain import Access, AccessEvent, Key, KeyEvent, evolve, evolve_access


class KeyRegistry:
    def __init__(self) -> None:
        self.by_id: dict[str, Key] = {}
        self.by_hash: dict[str, Key] = {}
        self.access: dict[str, Access] = {}

    def apply(self, event: KeyEvent) -> Key | None:
        before = self.by_id.get(event.key_id)
        after = evolve(before, event)
        if after is None or after is before:
            return after
        if before is not None:
            self.by_hash.pop(before.key_hash, None)
        self.by_id[after.key_id] = after
        if after.revoked_at is None:
            self.by_hash[after.key_hash] = after
        else:
            self.by_hash.pop(after.key_hash, None)
        return after

    def apply_access(self, event: AccessEvent) -> Access:
        access = evolve_access(self.access_of(event.account_id), event)
        self.access[event.account_id] = access
        return access

    def access_of(self, account_id: str) -> Access:
        return self.access.get(account_id) or Access(account_id)

    def lookup(self, key_hash: str) -> KeyView | None:
        """The active key with this hash as key.lookup answers it: with its account's suspension."""
        key = self.by_hash.get(key_hash)
        if key is None:
            return None
        suspended = self.access_of(key.account_id).suspended
        return msgspec.structs.replace(key.view(), account_suspended=True) if suspended else key.view()

    def used(self, key_id: str, account_id: str, at: datetime) -> None:
        key = self.by_id.get(key_id)
        if key is not None and key.account_id == account_id and (key.last_used_at is None or at > key.last_used_at):
            updated = dataclasses.replace(key, last_used_at=at)
            self.by_id[key_id] = updated
            if key.key_hash in self.by_hash:
                self.by_hash[key.key_hash] = updated

    def of_account(self, account_id: str) -> list[Key]:
        return sorted((k for k in self.by_id.values() if k.account_id == account_id), key=lambda k: k.created_at)

    async def load(self, conn: asyncpg.Connection, schema: str) -> None:
        """Memory from the projection's tables (at start, and after a replay swapped them). A key or an
        account that memory knows in a later state is kept as memory has it: the responder applies its
        own events at once, before the projection gets to them (a revocation must not come undone).

        Read a chunk of rows at a time in one snapshot, with the cyclic garbage collector paused (a
        million keys: see QuotaState.load), and one str object for each of the few names, kinds and
        prefixes rather than one per key."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            if conn.is_in_transaction():
                await self._load(conn, schema)
            else:
                async with conn.transaction(readonly=True, isolation="repeatable_read"):
                    await self._load(conn, schema)
        finally:
            if collecting:
                gc.enable()

    async def _load(self, conn: asyncpg.Connection, schema: str) -> None:
        by_id: dict[str, Key] = {}
        common: dict[str, str] = {}
        async for row in conn.cursor(
            f"""SELECT key_id, account_id, name, kind, prefix, last4, key_hash, created_at, rotated_at,
                       revoked_at, last_used_at, applied_events FROM {schema}.keys""",
            prefetch=10_000,
        ):
            name, kind, prefix = (common.setdefault(row[f], row[f]) for f in ("name", "kind", "prefix"))
            kind = cast(KeyKind, kind)
            by_id[row["key_id"]] = Key(
                row["key_id"], row["account_id"], name, kind, prefix, row["last4"], row["key_hash"],
                row["created_at"], row["rotated_at"], row["revoked_at"], row["last_used_at"],
                frozenset(row["applied_events"]),
            )  # fmt: skip
        for key_id, known in self.by_id.items():
            loaded = by_id.get(key_id)
            if loaded is None or not known.applied <= loaded.applied:
                by_id[key_id] = known
        access: dict[str, Access] = {}
        for row in await conn.fetch(f"SELECT account_id, suspended, since, applied_events FROM {schema}.access"):
            access[row["account_id"]] = Access(
                row["account_id"], row["suspended"], row["since"], frozenset(row["applied_events"])
            )
        for account_id, known_access in self.access.items():
            loaded_access = access.get(account_id)
            if loaded_access is None or not known_access.applied <= loaded_access.applied:
                access[account_id] = known_access
        self.by_id = by_id
        self.by_hash = {key.key_hash: key for key in by_id.values() if key.revoked_at is None}
        self.access = access
