"""The key lifecycle, pure: what a command decides, and how an event changes a key."""

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from libs import apikeys
from libs.refusal import Refusal
from proto.v1 import AccountSuspended, AccountUnsuspended, KeyCreated, KeyRevoked, KeyRotated, KeyView
from proto.v1.events import KeyKind

KeyEvent = KeyCreated | KeyRotated | KeyRevoked
AccessEvent = AccountSuspended | AccountUnsuspended
MAX_ACTIVE_KEYS = 100
"""Per account: bounds the registry, every key list and the hashes a suspension broadcasts."""


@dataclass(frozen=True, slots=True)
class Key:
    """One key as the registry keeps it (a million of them at scale: slots)."""

    key_id: str
    account_id: str
    name: str
    kind: KeyKind
    prefix: str
    last4: str
    key_hash: str
    created_at: datetime
    rotated_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    applied: frozenset[str] = field(default_factory=frozenset)
    """Ids of the events already in this state: applying one again changes nothing."""

    def view(self) -> KeyView:
        return KeyView(
            id=self.key_id, account_id=self.account_id, name=self.name, kind=self.kind, prefix=self.prefix,
            last4=self.last4, created_at=self.created_at, last_used_at=self.last_used_at,
            revoked_at=self.revoked_at,
        )  # fmt: skip


def issue(
    account_id: str, name: str, kind: KeyKind, now: datetime, account_keys: Sequence[Key] = ()
) -> tuple[KeyCreated, str]:
    if sum(1 for k in account_keys if k.revoked_at is None) >= MAX_ACTIVE_KEYS:
        raise Refusal("key_limit_reached", f"an account has at most {MAX_ACTIVE_KEYS} active keys: revoke one first")
    secret = apikeys.generate(kind)
    event = KeyCreated(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=now, key_id=f"key_{secrets.token_hex(8)}",
        name=name, kind=kind, key_hash=apikeys.hash_secret(secret), prefix=apikeys.PREFIXES[kind],
        last4=secret[-4:],
    )  # fmt: skip
    return event, secret


def _owned(key: Key | None, account_id: str, key_id: str) -> Key:
    if key is None or key.account_id != account_id:
        raise Refusal("key_not_found", f"no key {key_id!r} on this account")
    if key.revoked_at is not None:
        raise Refusal("key_revoked", f"key {key_id!r} is revoked")
    return key


def rotate(key: Key | None, account_id: str, key_id: str, now: datetime) -> tuple[KeyRotated, str]:
    current = _owned(key, account_id, key_id)
    secret = apikeys.generate(current.kind)
    event = KeyRotated(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=now, key_id=key_id,
        key_hash=apikeys.hash_secret(secret), previous_key_hash=current.key_hash, last4=secret[-4:],
    )  # fmt: skip
    return event, secret


def revoke(
    key: Key | None, account_id: str, key_id: str, now: datetime, account_keys: Sequence[Key] | None = None
) -> KeyRevoked:
    """With account_keys (the owner revoking), the account's last active management key stays: without
    it nobody could change the account any more. The operator (no account_keys) may revoke any key."""
    current = _owned(key, account_id, key_id)
    if account_keys is not None and current.kind == "management":
        others = [k for k in account_keys if k.kind == "management" and k.revoked_at is None and k.key_id != key_id]
        if not others:
            raise Refusal("last_management_key", "this is the account's last management key: create another one first")
    return KeyRevoked(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=now, key_id=key_id, key_hash=current.key_hash
    )


def evolve(key: Key | None, event: KeyEvent) -> Key | None:
    if key is not None and event.event_id in key.applied:
        return key
    if isinstance(event, KeyCreated):
        if key is not None:
            return key
        return Key(
            event.key_id, event.account_id, event.name, event.kind, event.prefix, event.last4, event.key_hash,
            event.occurred_at, applied=frozenset({event.event_id}),
        )  # fmt: skip
    if key is None:
        return None
    applied = key.applied | {event.event_id}
    if isinstance(event, KeyRotated):
        return replace(key, key_hash=event.key_hash, last4=event.last4, rotated_at=event.occurred_at, applied=applied)
    return replace(key, revoked_at=event.occurred_at, applied=applied)


@dataclass(frozen=True)
class Access:
    """Whether an account's keys are let in: suspended by the operator, or not."""

    account_id: str
    suspended: bool = False
    since: datetime | None = None
    applied: frozenset[str] = field(default_factory=frozenset)


def set_suspended(access: Access, suspended: bool, reason: str, now: datetime) -> AccessEvent | None:
    """The event that puts the account in that state, or None when it already is."""
    if access.suspended == suspended:
        return None
    kind = AccountSuspended if suspended else AccountUnsuspended
    return kind(event_id=str(uuid.uuid4()), account_id=access.account_id, occurred_at=now, reason=reason)


def evolve_access(access: Access, event: AccessEvent) -> Access:
    if event.event_id in access.applied:
        return access
    applied = access.applied | {event.event_id}
    return Access(access.account_id, isinstance(event, AccountSuspended), event.occurred_at, applied)
