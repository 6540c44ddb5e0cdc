"""keys: key.lookup, the key commands, suspensions and the keys.changed broadcast."""

from datetime import datetime

import msgspec

from proto.v1.events import KeyKind
from proto.v1.messages.common import (
    KeyRefusalCode,
    Text,
)


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed: never the secret."""

    id: str
    account_id: str
    name: str
    kind: KeyKind
    prefix: str
    last4: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    account_suspended: bool = False
    """The key's account is suspended (AccountSuspended): its keys are refused with 403."""


class LookupKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    key_hash: str


class KeyFound(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    key: KeyView | None
    """None when no active key has this hash."""


class CreateKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    name: Text
    kind: KeyKind


class RotateKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    key_id: Text


class RevokeKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    key_id: Text


class ListKeys(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RevokeAnyKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The operator revokes a key of any account (admin API); answered with a KeyList of it."""

    key_id: str


class SuspendAccount(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Suspend (suspended=True) or lift the suspension of an account's keys; answered with AccountAccess."""

    account_id: str
    suspended: bool
    reason: str = ""


class GetAccountAccess(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Is this account suspended? Answered with AccountAccess (changed=False): ingress asks it for
    the console's owner, whose pass, unlike a key, does not come back from key.lookup with it."""

    account_id: str


class AccountAccess(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    suspended: bool
    changed: bool
    """False when the account already was in that state (nothing recorded)."""
    since: datetime | None = None
    """When the current state began (None: never suspended)."""


class KeyIssued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The answer to CreateKey and RotateKey: the only time a secret travels."""

    key: KeyView
    secret: str


class KeyList(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    keys: list[KeyView]


class KeyCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: KeyRefusalCode
    message: str


class KeysChanged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Broadcast on `keys.changed` once a key was created, rotated or revoked: caches drop these."""

    key_hashes: list[str]
    account_ids: list[str] = []
    """Accounts whose suspension changed: caches of GetAccountAccess drop these."""
