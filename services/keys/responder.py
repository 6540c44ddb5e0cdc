"""keys' commands and queries (libs.rpc; key.lookup on raw nats-py: the hot path). Commands publish
their event, apply it to memory at once (read-your-writes: the new key works on the next call), and
tell every cache.

The last use of a key is projected by whichever instance holds its account's partition
(services/keys/app.py), so an account's key list takes it from the projection's table, not from this
instance's memory, which has it only for the partitions projected here."""

import asyncio
import dataclasses

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.clock import Clock
from libs.eventlog.follower import LogFollower
from libs.eventlog.publisher import EventPublisher
from libs.leases import PartitionLeases
from libs.rpc import Replier
from proto.v1 import (
    AccountAccess,
    CreateKey,
    GetAccountAccess,
    KeyFound,
    KeyIssued,
    KeyList,
    KeysChanged,
    ListKeys,
    LookupKey,
    RevokeAnyKey,
    RevokeKey,
    RotateKey,
    SuspendAccount,
    encode,
    rpc,
    subjects,
)
from services.keys import domain
from services.keys.domain import KeyEvent
from services.keys.registry import KeyRegistry


class KeysResponder:
    def __init__(
        self,
        registry: KeyRegistry,
        publisher: EventPublisher,
        nc: Client,
        clock: Clock,
        follower: LogFollower | None = None,
        leases: PartitionLeases | None = None,
        last_use: tuple[asyncpg.Pool, str] | None = None,
    ) -> None:
        """last_use: the pool and schema of the projection that holds every key's last use."""
        self._registry = registry
        self._last_use = last_use
        self._follower, self._leases = follower, leases
        self._syncing: set[asyncio.Task[None]] = set()
        self._changes_unseen = 0
        """keys.changed broadcasts heard whose events this instance's follower may not have applied yet."""
        self._publisher = publisher
        self._nc = nc
        self._clock = clock
        self._lookup = msgspec.json.Decoder(LookupKey)
        self._lock = asyncio.Lock()

    def serve(self, runtime: Replier) -> None:
        """key.lookup is on every model call's path: raw nats-py (on_lookup, app.py); the rest is typed."""
        runtime.reply(rpc.KEYS_ACCESS, self.access)
        runtime.reply(rpc.KEYS_LIST, self.list_keys)
        runtime.reply(rpc.KEYS_CREATE, self.create)
        runtime.reply(rpc.KEYS_ROTATE, self.rotate)
        runtime.reply(rpc.KEYS_REVOKE, self.revoke)
        runtime.reply(rpc.KEYS_REVOKE_ANY, self.revoke_any)
        runtime.reply(rpc.KEYS_SUSPEND, self.suspend)

    async def on_lookup(self, msg: Msg) -> None:
        key_hash = self._lookup.decode(msg.data).key_hash
        key = self._registry.lookup(key_hash)
        unsure = key is None or self._changes_unseen > 0  # a key just created, or just revoked elsewhere
        if unsure and self._follower is not None and self._leases is not None and self._leases.members > 1:
            # Another instance may have just created it: answer once this one has applied the log
            # so far (off the subscription's callback, which would hold every other lookup up).
            task = asyncio.create_task(self._lookup_synced(msg, key_hash))
            self._syncing.add(task)
            task.add_done_callback(self._syncing.discard)
            return
        await msg.respond(encode(KeyFound(key=key)))

    async def follow_changes(self) -> None:
        """Hear keys.changed: until the follower has applied the log as far as the change, lookups
        here wait for it (a revocation decided by the leader is never answered from before it)."""
        await self._nc.subscribe(subjects.KEYS_CHANGED, cb=self._on_changed)

    async def _on_changed(self, _msg: Msg) -> None:
        if self._follower is None:
            return
        self._changes_unseen += 1
        task = asyncio.create_task(self._seen())
        self._syncing.add(task)
        task.add_done_callback(self._syncing.discard)

    async def _seen(self) -> None:
        assert self._follower is not None
        try:
            await self._follower.synced()
        finally:
            self._changes_unseen -= 1

    async def _lookup_synced(self, msg: Msg, key_hash: str) -> None:
        assert self._follower is not None
        await self._follower.synced()
        await msg.respond(encode(KeyFound(key=self._registry.lookup(key_hash))))

    async def access(self, request: GetAccountAccess) -> AccountAccess:
        access = self._registry.access_of(request.account_id)
        return AccountAccess(account_id=access.account_id, suspended=access.suspended, changed=False,
                             since=access.since)  # fmt: skip

    async def list_keys(self, command: ListKeys) -> KeyList:
        keys = self._registry.of_account(command.account_id)
        if self._last_use is not None and keys:
            pool, schema = self._last_use
            rows = await pool.fetch(
                f"SELECT key_id, last_used_at FROM {schema}.keys WHERE account_id = $1 AND last_used_at IS NOT NULL",
                command.account_id,
            )
            projected = {row["key_id"]: row["last_used_at"] for row in rows}
            keys = [
                dataclasses.replace(k, last_used_at=projected[k.key_id])
                if k.key_id in projected and (k.last_used_at is None or projected[k.key_id] > k.last_used_at)
                else k
                for k in keys
            ]
        return KeyList(keys=[k.view() for k in keys])

    async def create(self, command: CreateKey) -> KeyIssued:
        async with self._lock:
            account_keys = self._registry.of_account(command.account_id)
            created, secret = domain.issue(command.account_id, command.name, command.kind, self._clock.now(),
                                           account_keys)  # fmt: skip
            key = await self._record(created, [created.key_hash])
        return KeyIssued(key=key.view(), secret=secret)

    async def rotate(self, command: RotateKey) -> KeyIssued:
        async with self._lock:
            current = self._registry.by_id.get(command.key_id)
            rotated, secret = domain.rotate(current, command.account_id, command.key_id, self._clock.now())
            key = await self._record(rotated, [rotated.previous_key_hash, rotated.key_hash])
        return KeyIssued(key=key.view(), secret=secret)

    async def revoke(self, command: RevokeKey) -> KeyList:
        async with self._lock:
            owned = self._registry.of_account(command.account_id)
            current = self._registry.by_id.get(command.key_id)
            revoked = domain.revoke(current, command.account_id, command.key_id, self._clock.now(), owned)
            key = await self._record(revoked, [revoked.key_hash])
        return KeyList(keys=[key.view()])

    async def revoke_any(self, command: RevokeAnyKey) -> KeyList:
        """The operator: any account's key, even its last management key."""
        async with self._lock:
            current = self._registry.by_id.get(command.key_id)
            owner = current.account_id if current is not None else ""
            revoked = domain.revoke(current, owner, command.key_id, self._clock.now())
            key = await self._record(revoked, [revoked.key_hash])
        return KeyList(keys=[key.view()])

    async def suspend(self, command: SuspendAccount) -> AccountAccess:
        async with self._lock:
            return await self._suspend(command)

    async def _suspend(self, command: SuspendAccount) -> AccountAccess:
        access = self._registry.access_of(command.account_id)
        event = domain.set_suspended(access, command.suspended, command.reason, self._clock.now())
        if event is not None:
            await self._publisher.publish([event])
            access = self._registry.apply_access(event)
            # Every cache drops the account's keys now, so the next call meets the new state.
            hashes = [k.key_hash for k in self._registry.of_account(command.account_id) if k.revoked_at is None]
            changed = KeysChanged(key_hashes=hashes, account_ids=[command.account_id])
            await self._nc.publish(subjects.KEYS_CHANGED, encode(changed))
        return AccountAccess(
            account_id=command.account_id, suspended=access.suspended, changed=event is not None, since=access.since
        )

    async def _record(self, event: KeyEvent, hashes: list[str]) -> domain.Key:
        await self._publisher.publish([event])
        key = self._registry.apply(event)
        assert key is not None
        await self._nc.publish(subjects.KEYS_CHANGED, encode(KeysChanged(key_hashes=hashes)))
        return key
