"""API key authentication for the services that take keys (gateway, ingress): the format
check first (a malformed key is refused without any lookup), then key.lookup over NATS,
cached. A cached key is dropped as soon as `keys.changed` names it, and never trusted
for longer than `max_age` without asking again: a revoked or rotated-away key stops
working within that time even if a broadcast was missed.

The key format's checksum is public, so anyone can mint well-formed keys: the cache is
bounded (two LRUs, so that a flood of unknown keys cannot evict the known ones), and
lookups of keys not known to be valid are rate-limited per client address and overall.
A key once seen valid is always re-checked, so a flood never locks out keys in use.
Concurrent calls with the same key share one lookup: a client fanning out on a brand-new key
(Claude Code starting several requests at once) costs one lookup and one token, not one each."""

import asyncio
import time
from collections.abc import Callable

import msgspec
import nats.errors
from aiohttp import web
from cachetools import LRUCache
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import apikeys, tracing
from libs.settings_views import KeyCacheSettings
from libs.web import ApiError
from proto.v1 import KeyFound, KeysChanged, KeyView, LookupKey, encode, subjects


class KeysUnavailable(Exception):
    """The keys service did not answer: the caller should answer 503, not 401."""


class UnknownKeysThrottled(ApiError):
    """Too many unknown keys from this client (or from everyone): refused without a lookup."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1, int(retry_after_s + 0.999))
        message = f"too many unknown API keys were presented; retry in {self.retry_after_s} s"
        super().__init__(429, "too_many_unknown_keys", message, "Authorization")

    def response(self) -> web.Response:
        response = super().response()
        response.headers["retry-after"] = str(self.retry_after_s)
        return response


class TokenBucket:
    """`burst` lookups at once, refilled at `rate_per_s`."""

    __slots__ = ("burst", "rate_per_s", "tokens", "updated")

    def __init__(self, burst: float, rate_per_s: float, now: float) -> None:
        self.burst, self.rate_per_s, self.tokens, self.updated = burst, rate_per_s, burst, now

    def wait_s(self, now: float) -> float:
        """0 when a token is there to take, else how long until one is."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate_per_s if self.rate_per_s > 0 else 3600.0

    def take(self) -> None:
        self.tokens -= 1

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1)


class KeyCache:
    def __init__(
        self,
        nc: Client,
        *,
        max_age_s: float = 1.0,
        timeout_s: float = 2.0,
        max_entries: int = 100_000,
        per_client: tuple[float, float] = (20, 0.2),
        overall: tuple[float, float] = (1000, 200.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`per_client` and `overall` are (burst, refill per second) of lookups of keys not known valid."""
        self._nc = nc
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._known: LRUCache[str, tuple[float, KeyView]] = LRUCache(max_entries)
        self._unknown: LRUCache[str, float] = LRUCache(max_entries)
        self._clients: LRUCache[str, TokenBucket] = LRUCache(max_entries)
        self._looking_up: dict[str, asyncio.Future[KeyView | None]] = {}
        """The lookups on their way, by key hash: a second caller with the same key waits for the first's."""
        self._per_client = per_client
        self._overall = TokenBucket(*overall, clock())
        self._clock = clock
        self._found = msgspec.json.Decoder(KeyFound)
        self._changed = msgspec.json.Decoder(KeysChanged)

    @classmethod
    def from_settings(cls, nc: Client, settings: KeyCacheSettings) -> "KeyCache":
        return cls(
            nc, max_entries=settings.key_cache_size,
            per_client=(settings.unknown_key_burst, settings.unknown_key_rate_per_s),
            overall=(settings.unknown_key_global_burst, settings.unknown_key_global_rate_per_s),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    async def start(self) -> None:
        await self._nc.subscribe(subjects.KEYS_CHANGED, cb=self._on_changed)

    async def _on_changed(self, msg: Msg) -> None:
        for key_hash in self._changed.decode(msg.data).key_hashes:
            self._known.pop(key_hash, None)
            self._unknown.pop(key_hash, None)

    async def authenticate(self, secret: str, client: str | None = None) -> KeyView | None:
        """The active key with this secret, or None (malformed, unknown, rotated away, revoked).
        Raises UnknownKeysThrottled when a key not known valid would cost a lookup over the limit
        of `client` (its address: the peer, or the client a trusted proxy names) or of all clients."""
        # A known key's hash first: only a well-formed secret hashes to one (the keys service issued
        # it), and the format check costs ten times the hash. Anything else is checked before a lookup.
        key_hash = apikeys.hash_secret(secret)
        now = self._clock()
        known = self._known.get(key_hash)
        if known is not None and now - known[0] < self._max_age_s:
            return known[1]
        if known is None and apikeys.kind_of(secret) is None:
            return None
        pending = self._looking_up.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        if known is not None:
            return await self._shared_lookup(key_hash, now, [])
        checked_at = self._unknown.get(key_hash)
        if checked_at is not None and now - checked_at < self._max_age_s:
            return None
        # Possibly one more minted key: it takes a token from the client's and the overall
        # bucket before its lookup, and gives them back if the key turns out to be valid.
        buckets = [self._overall]
        if client is not None:
            bucket = self._clients.get(client)
            if bucket is None:
                bucket = self._clients[client] = TokenBucket(*self._per_client, now)
            buckets.insert(0, bucket)
        wait_s = max(bucket.wait_s(now) for bucket in buckets)
        if wait_s > 0:
            raise UnknownKeysThrottled(wait_s)
        for bucket in buckets:
            bucket.take()
        return await self._shared_lookup(key_hash, now, buckets)

    async def _shared_lookup(self, key_hash: str, now: float, taken: list[TokenBucket]) -> KeyView | None:
        """One lookup that callers with the same key arriving meanwhile wait for too (shielded: one
        caller hanging up does not cancel the others' answer)."""
        lookup = asyncio.ensure_future(self._lookup(key_hash, now, taken))
        self._looking_up[key_hash] = lookup
        lookup.add_done_callback(lambda _: self._forget_lookup(key_hash))
        return await asyncio.shield(lookup)

    def _forget_lookup(self, key_hash: str) -> None:
        lookup = self._looking_up.pop(key_hash)
        if not lookup.cancelled():
            lookup.exception()  # retrieved: when every caller hung up, nobody else will have

    async def _ask(self, key_hash: str) -> Msg:
        """key.lookup, asked a second time within the same time budget when the first gets no answer:
        a lookup is a read, and one sent to an instance as it died (SIGKILLed: the server routed it
        there before it saw the connection close) is lost with it; the queue group gives the second
        to a live instance. No responders at all is not retried."""
        request = encode(LookupKey(key_hash=key_hash))
        deadline = time.monotonic() + self._timeout_s
        try:
            return await self._nc.request(
                subjects.KEY_LOOKUP, request, timeout=self._timeout_s / 2, headers=tracing.nats_headers()
            )
        except nats.errors.TimeoutError:
            return await self._nc.request(
                subjects.KEY_LOOKUP, request, timeout=max(0.01, deadline - time.monotonic()),
                headers=tracing.nats_headers(),
            )  # fmt: skip

    async def _lookup(self, key_hash: str, now: float, taken: list[TokenBucket]) -> KeyView | None:
        try:
            reply = await self._ask(key_hash)
        except Exception as exc:
            for bucket in taken:  # nothing was learnt: the client is not to blame
                bucket.give_back()
            raise KeysUnavailable(repr(exc)) from exc
        key = self._found.decode(reply.data).key
        if key is None:
            self._known.pop(key_hash, None)
            self._unknown[key_hash] = now
        else:
            self._unknown.pop(key_hash, None)
            self._known[key_hash] = (now, key)
            for bucket in taken:
                bucket.give_back()
        return key
