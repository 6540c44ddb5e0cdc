"""API key authentication for the services that take keys (gateway, ingress): the format
check first (a malformed key is refused without any lookup), then key.lookup over NATS,
cached. A cached key is dropped as soon as `keys.changed` names it, and never trusted
for longer than `max_age` without asking again: a revoked or rotated-away key stops
working within that time even if a broadcast was missed."""

import time

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import apikeys, tracing
from proto.v1 import KeyFound, KeysChanged, KeyView, LookupKey, encode, subjects


class KeysUnavailable(Exception):
    """The keys service did not answer: the caller should answer 503, not 401."""


class KeyCache:
    def __init__(self, nc: Client, *, max_age_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._entries: dict[str, tuple[float, KeyView | None]] = {}
        self._found = msgspec.json.Decoder(KeyFound)
        self._changed = msgspec.json.Decoder(KeysChanged)

    async def start(self) -> None:
        await self._nc.subscribe(subjects.KEYS_CHANGED, cb=self._on_changed)

    async def _on_changed(self, msg: Msg) -> None:
        for key_hash in self._changed.decode(msg.data).key_hashes:
            self._entries.pop(key_hash, None)

    async def authenticate(self, secret: str) -> KeyView | None:
        """The active key with this secret, or None (malformed, unknown, rotated away, revoked)."""
        if apikeys.kind_of(secret) is None:
            return None
        key_hash = apikeys.hash_secret(secret)
        entry = self._entries.get(key_hash)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self._max_age_s:
            return entry[1]
        try:
            reply = await self._nc.request(
                subjects.KEY_LOOKUP,
                encode(LookupKey(key_hash=key_hash)),
                timeout=self._timeout_s,
                headers=tracing.nats_headers(),
            )
        except Exception as exc:
            raise KeysUnavailable(repr(exc)) from exc
        key = self._found.decode(reply.data).key
        self._entries[key_hash] = (now, key)
        return key
