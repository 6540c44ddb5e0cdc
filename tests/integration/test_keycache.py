"""The key cache against a real nats-server: minted well-formed keys cannot grow its memory
or the keys service's load without bound, and keys in use keep working through a flood."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import apikeys
from libs.connections import subscribed
from libs.keycache import KeyCache, KeysUnavailable, UnknownKeysThrottled
from libs.localservers import LocalNats
from proto.v1 import KeyFound, KeyView, LookupKey, encode, subjects

pytestmark = pytest.mark.connected


@dataclass
class KeysResponder:
    """Answers key.lookup like the keys service: only `valid` keys exist. Counts every lookup."""

    valid: dict[str, KeyView] = field(default_factory=dict)
    lookups: int = 0

    async def answer(self, msg: Msg) -> None:
        self.lookups += 1
        key_hash = msgspec.json.decode(msg.data, type=LookupKey).key_hash
        await msg.respond(encode(KeyFound(key=self.valid.get(key_hash))))


@pytest.fixture
async def keys(nc: Client) -> AsyncIterator[KeysResponder]:
    responder = KeysResponder()
    subscription = await nc.subscribe(subjects.KEY_LOOKUP, cb=responder.answer)
    yield responder
    await subscription.unsubscribe()


def valid_key(responder: KeysResponder) -> str:
    secret = apikeys.generate("subscription")
    responder.valid[apikeys.hash_secret(secret)] = KeyView(
        id="key_1", account_id="acct_1", kind="subscription", prefix=secret[:12], last4=secret[-4:],
        name="default", created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return secret


async def test_fifty_thousand_minted_keys_keep_the_cache_at_its_cap_and_lookups_bounded(
    nc: Client, keys: KeysResponder
) -> None:
    cap, burst, rate = 1000, 500, 200.0
    cache = KeyCache(nc, max_entries=cap, per_client=(10, 0.2), overall=(burst, rate))
    user = valid_key(keys)
    assert (await cache.authenticate(user, "192.0.2.1")) is not None
    started, throttled, refused = time.monotonic(), 0, 0
    for i in range(50_000):
        # Each minted key from its own address: only the overall limit can stop them.
        address = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        try:
            assert await cache.authenticate(apikeys.generate("subscription"), address) is None
            refused += 1
        except UnknownKeysThrottled as exc:
            throttled += 1
            assert exc.status == 429 and exc.retry_after_s >= 1
        if i % 5000 == 0:  # the key in use keeps working through the flood, re-checked once stale
            assert (await cache.authenticate(user, "192.0.2.1")) is not None
        assert len(cache) <= 2 * cap
    elapsed = time.monotonic() - started
    minted_lookups = keys.lookups - 1 - 10  # less the valid key's own lookups (at most 1 + 10 re-checks)
    assert minted_lookups <= burst + rate * elapsed + 1, (minted_lookups, elapsed)
    assert throttled >= 50_000 - (burst + rate * elapsed + 1)
    assert len(cache._unknown) <= cap and len(cache._known) == 1
    assert (await cache.authenticate(user, "192.0.2.1")) is not None


async def test_the_cache_keeps_only_its_cap_of_unknown_keys(nc: Client, keys: KeysResponder) -> None:
    cache = KeyCache(nc, max_entries=100, per_client=(10**9, 0), overall=(10**9, 0))
    user = valid_key(keys)
    await cache.authenticate(user)
    for _ in range(2_000):
        assert await cache.authenticate(apikeys.generate("payg"), "198.51.100.7") is None
    assert len(cache._unknown) == 100 and len(cache._known) == 1  # unknown keys never evict the known one
    assert keys.lookups == 2_001


async def test_an_address_presenting_unknown_keys_is_refused_without_lookups_until_it_refills(
    nc: Client, keys: KeysResponder
) -> None:
    now = [1000.0]
    cache = KeyCache(nc, per_client=(5, 0.5), overall=(10**6, 10**6), clock=lambda: now[0])
    for _ in range(5):
        assert await cache.authenticate(apikeys.generate("subscription"), "203.0.113.9") is None
    with pytest.raises(UnknownKeysThrottled) as refused:
        await cache.authenticate(apikeys.generate("subscription"), "203.0.113.9")
    assert refused.value.retry_after_s == 2 and refused.value.response().headers["retry-after"] == "2"
    assert keys.lookups == 5
    # The same unknown key again is answered from the cache, another address is not affected,
    # and a valid key that was never seen still costs the address nothing once found.
    assert await cache.authenticate(apikeys.generate("subscription"), "203.0.113.10") is None
    assert keys.lookups == 6
    now[0] += 2.0
    assert await cache.authenticate(valid_key(keys), "203.0.113.9") is not None
    assert await cache.authenticate(apikeys.generate("subscription"), "203.0.113.9") is None
    with pytest.raises(UnknownKeysThrottled):
        await cache.authenticate(apikeys.generate("subscription"), "203.0.113.9")
    assert keys.lookups == 8


async def test_a_lookup_that_fails_does_not_count_against_the_client(nc: Client) -> None:
    cache = KeyCache(nc, timeout_s=0.2, per_client=(1, 0), overall=(1, 0))
    for _ in range(3):  # nobody answers key.lookup here
        with pytest.raises(KeysUnavailable):
            await cache.authenticate(apikeys.generate("subscription"), "192.0.2.50")


async def test_fifty_calls_at_once_on_a_brand_new_key_share_one_lookup_and_none_is_throttled(
    nc: Client, keys: KeysResponder
) -> None:
    # A client fanning out on a key it has just created (an agent starting its requests at once):
    # more calls than the client's burst of unknown-key lookups, all before the first answer.
    cache = KeyCache(nc, per_client=(5, 0.2), overall=(5, 0.2))
    secret = valid_key(keys)
    found = await asyncio.gather(*(cache.authenticate(secret, "192.0.2.7") for _ in range(50)))
    assert all(key is not None and key.id == "key_1" for key in found)
    assert keys.lookups == 1
    minted = apikeys.generate("subscription")  # an unknown key shares its one lookup the same way
    assert await asyncio.gather(*(cache.authenticate(minted, "192.0.2.8") for _ in range(50))) == [None] * 50
    assert keys.lookups == 2


async def test_a_known_key_is_answered_from_its_hash_without_the_format_check(
    nc: Client, keys: KeysResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The format check costs ten times the hash (5 µs of a gateway call's CPU): a secret that hashes
    to a key the cache knows is that key, well formed; only other secrets are checked before a lookup."""
    checked: list[str] = []

    def kind_of(secret: str) -> apikeys.KeyKind | None:
        checked.append(secret)
        return apikeys.kind_of(secret)

    monkeypatch.setattr("libs.keycache.apikeys", _Apikeys(kind_of))
    cache = KeyCache(nc)
    user = valid_key(keys)
    for _ in range(100):
        assert (await cache.authenticate(user, "192.0.2.1")) is not None
    assert checked == [user] and keys.lookups == 1
    malformed = user[:-1] + ("A" if user[-1] != "A" else "B")
    assert await cache.authenticate(malformed, "192.0.2.1") is None
    assert checked == [user, malformed] and keys.lookups == 1  # refused by its format: no lookup


class _Apikeys:
    """libs.apikeys as the key cache sees it, with kind_of counted."""

    def __init__(self, kind_of: object) -> None:
        self.kind_of = kind_of

    def __getattr__(self, name: str) -> object:
        return getattr(apikeys, name)


async def test_a_lookup_lost_with_an_instance_as_it_died_is_asked_again_of_a_live_one(
    nc: Client, nats_server: LocalNats
) -> None:
    """Two keys instances in the queue group; one dies as a lookup reaches it (its connection closed
    with the request unanswered, as a SIGKILLed process's). The queue group gives it every other
    first lookup or so: each is asked again, of the live one, within the one time budget."""
    live = KeysResponder()
    secret = valid_key(live)
    answering = await nc.subscribe(subjects.KEY_LOOKUP, queue="keys", cb=live.answer)
    cache = KeyCache(nc, max_age_s=0.0, timeout_s=1.0)  # every call a lookup
    died = 0
    try:
        for _ in range(12):
            dying = await nats.connect(nats_server.url)
            gone = asyncio.Event()

            async def die(_: Msg, dying: Client = dying, gone: asyncio.Event = gone) -> None:
                gone.set()
                await dying.close()  # the request dies with it

            await dying.subscribe(subjects.KEY_LOOKUP, queue="keys", cb=die)
            await subscribed(dying)
            started = time.monotonic()
            assert (await cache.authenticate(secret)) is not None  # KeysUnavailable without the second ask
            assert time.monotonic() - started < 1.2
            died += gone.is_set()
            if not dying.is_closed:
                await dying.close()
        assert died >= 2, "the dying instance must have been given some lookups for this to prove anything"
    finally:
        await answering.unsubscribe()
