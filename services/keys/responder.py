"""keys' request/reply subjects. Commands publish their event, apply it to memory at once
(read-your-writes: the new key works on the next call), and tell every cache."""

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.clock import Clock
from libs.eventlog.publisher import EventPublisher
from proto.v1 import (
    AccountAccess,
    CreateKey,
    GetAccountAccess,
    KeyCommandFailed,
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
    subjects,
)
from services.keys import domain
from services.keys.domain import KeyCommandError, KeyEvent
from services.keys.registry import KeyRegistry

Command = CreateKey | RotateKey | RevokeKey | ListKeys | RevokeAnyKey | SuspendAccount


class KeysResponder:
    def __init__(self, registry: KeyRegistry, publisher: EventPublisher, nc: Client, clock: Clock) -> None:
        self._registry = registry
        self._publisher = publisher
        self._nc = nc
        self._clock = clock
        self._lookup = msgspec.json.Decoder(LookupKey)
        self._access = msgspec.json.Decoder(GetAccountAccess)
        self._commands = msgspec.json.Decoder(Command)
        self._lock = asyncio.Lock()

    def subjects(self) -> dict[str, Callable[[Msg], Awaitable[None]]]:
        return {subjects.KEY_LOOKUP: self.on_lookup, subjects.KEYS_CREATE: self.on_command,
                subjects.KEYS_LIST: self.on_command, subjects.KEYS_ROTATE: self.on_command,
                subjects.KEYS_REVOKE: self.on_command, subjects.KEYS_REVOKE_ANY: self.on_command,
                subjects.KEYS_SUSPEND: self.on_command, subjects.KEYS_ACCESS: self.on_access}  # fmt: skip

    async def on_lookup(self, msg: Msg) -> None:
        key = self._registry.lookup(self._lookup.decode(msg.data).key_hash)
        await msg.respond(encode(KeyFound(key=key)))

    async def on_access(self, msg: Msg) -> None:
        access = self._registry.access_of(self._access.decode(msg.data).account_id)
        await msg.respond(
            encode(AccountAccess(account_id=access.account_id, suspended=access.suspended, changed=False,
                                 since=access.since))
        )  # fmt: skip

    async def on_command(self, msg: Msg) -> None:
        try:
            command = self._commands.decode(msg.data)
            async with self._lock:
                reply: msgspec.Struct = await self._handle(command)
        except KeyCommandError as exc:
            reply = KeyCommandFailed(code=exc.code, message=exc.message)
        except msgspec.ValidationError as exc:
            reply = KeyCommandFailed(code="invalid_request", message=str(exc))
        await msg.respond(encode(reply))

    async def _handle(self, command: Command) -> msgspec.Struct:
        now = self._clock.now()
        if isinstance(command, ListKeys):
            return KeyList(keys=[k.view() for k in self._registry.of_account(command.account_id)])
        if isinstance(command, SuspendAccount):
            return await self._suspend(command)
        if isinstance(command, CreateKey):
            account_keys = self._registry.of_account(command.account_id)
            created, secret = domain.issue(command.account_id, command.name, command.kind, now, account_keys)
            key = await self._record(created, [created.key_hash])
            return KeyIssued(key=key.view(), secret=secret)
        current = self._registry.by_id.get(command.key_id)
        if isinstance(command, RotateKey):
            rotated, secret = domain.rotate(current, command.account_id, command.key_id, now)
            key = await self._record(rotated, [rotated.previous_key_hash, rotated.key_hash])
            return KeyIssued(key=key.view(), secret=secret)
        if isinstance(command, RevokeAnyKey):  # the operator: any account's key, even its last management key
            owner = current.account_id if current is not None else ""
            revoked = domain.revoke(current, owner, command.key_id, now)
        else:
            owned = self._registry.of_account(command.account_id)
            revoked = domain.revoke(current, command.account_id, command.key_id, now, owned)
        key = await self._record(revoked, [revoked.key_hash])
        return KeyList(keys=[key.view()])

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
