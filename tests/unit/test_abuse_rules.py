"""The abuse rules and the client marks, pure: who the client is behind a trusted proxy, which
evidence makes a signal and which does not, and how accounts are ranked."""

from datetime import UTC, datetime, timedelta

from libs.clients import client_address, trusted_networks
from services.billing.abuse_rules import ClientUse, HourUse, plan_on, score
from services.gateway.clients import client_marks, keyed_hash

T0 = datetime(2026, 11, 20, tzinfo=UTC)
H = timedelta(hours=1)
PROXY = trusted_networks("127.0.0.1, 10.0.0.0/8")
CAPS = {"free": 50_400_000, "pro": 504_000_000}


def test_the_client_is_the_peer_unless_a_trusted_proxy_forwarded_the_call() -> None:
    assert client_address("198.51.100.1", "203.0.113.9", PROXY) == "198.51.100.1"  # not a proxy: header ignored
    assert client_address("127.0.0.1", None, PROXY) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.9", PROXY) == "203.0.113.9"
    # A client's own claim comes first; the nearest untrusted hop (what our proxies saw) wins.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.9, 10.1.2.3", PROXY) == "203.0.113.9"
    assert client_address("127.0.0.1", "not-an-address", PROXY) == "127.0.0.1"
    assert client_address("127.0.0.1", "10.0.0.5", PROXY) == "10.0.0.5"  # only proxies: the first hop
    assert trusted_networks("") == ()


def test_the_marks_are_keyed_hashes_never_the_values() -> None:
    address, agent = client_marks("k", "127.0.0.1", {"X-Forwarded-For": "203.0.113.9", "User-Agent": "sdk"}, PROXY)
    assert address == keyed_hash("k", "addr", "203.0.113.9") and agent == keyed_hash("k", "ua", "sdk")
    assert address != keyed_hash("other-key", "addr", "203.0.113.9") and "203" not in (address or "")
    assert client_marks("k", None, {}, PROXY) == (None, None)


def test_a_client_seen_again_costs_no_new_hmac() -> None:
    """Two HMACs were 5 µs of each gateway call's CPU: a client calls again from the same address
    with the same agent, so the marks of those seen last are remembered (at most 1,024)."""
    client_marks("k2", "192.0.2.7", {"User-Agent": "sdk/2"}, ())
    hits = keyed_hash.cache_info().hits
    assert client_marks("k2", "192.0.2.7", {"User-Agent": "sdk/2"}, ()) == (
        keyed_hash("k2", "addr", "192.0.2.7"), keyed_hash("k2", "ua", "sdk/2"),
    )  # fmt: skip
    assert keyed_hash.cache_info().hits >= hits + 2
    assert keyed_hash.cache_info().maxsize == 1024


def use(account: str, client: str, key: str = "", calls: int = 1) -> ClientUse:
    return ClientUse(account, key, client, "", T0, T0 + H, calls)


def test_an_address_shared_by_three_accounts_is_a_signal_for_each_two_are_not() -> None:
    ranked = score(["a", "b", "c", "d"], [use("a", "x"), use("b", "x"), use("c", "y"), use("d", "y")], [], {}, CAPS, 1)
    assert ranked == []
    ranked = score(["a", "b", "c", "d"], [use("a", "x"), use("b", "x"), use("c", "x", calls=3)], [], {}, CAPS, 0)
    assert [(a.account_id, a.score) for a in ranked] == [("a", 30), ("b", 30), ("c", 30), ("d", 0)]
    [signal] = ranked[2].signals
    assert signal.accounts == ["a", "b"] and signal.count == 3


def day_of_use(account: str, day: datetime, hours: int, flows_each: int) -> list[HourUse]:
    return [HourUse(account, day + h * H, 1, flows_each) for h in range(hours)]


def test_around_the_clock_needs_nearly_every_hour_near_the_plans_daily_use_for_three_days() -> None:
    daily_free = CAPS["free"] // 7  # 7.2 Flows
    near = daily_free * 4 // 5 // 20 + 1
    three = [u for d in range(3) for u in day_of_use("a", T0 + d * 24 * H, 20, near)]
    [ranked] = score(["a"], [], three, {}, CAPS, 1)
    assert ranked.score == 30 and ranked.signals[0].count == 3
    assert score(["a"], [], three[:40], {}, CAPS, 1) == []  # two days
    assert score(["a"], [], [u for u in three if u.hour.hour != 0], {}, CAPS, 1) == []  # 19 hours a day
    low = [u._replace(flows_micros=near // 2) for u in three]
    assert score(["a"], [], low, {}, CAPS, 1) == []
    pro = {"a": [(T0 - 24 * H, "pro", T0 + 40 * 24 * H)]}  # the same use is far from Pro's daily use
    assert score(["a"], [], three, pro, CAPS, 1) == []
    assert plan_on(pro["a"], T0) == "pro" and plan_on(pro["a"], T0 + 41 * 24 * H) == "free"


def test_many_keys_across_many_clients_and_the_ranking() -> None:
    spread = [use("r", f"c{i}", key=f"k{i}") for i in range(3)]
    assert [s.kind for s in score(["r"], spread, [], {}, CAPS, 1)[0].signals] == ["keys_across_clients"]
    assert score(["r"], [*spread[:2], use("r", "c0", key="k2")], [], {}, CAPS, 1) == []
    pooled = [use(a, "x") for a in "abcde"]
    ranked = score(list("abcder"), pooled + spread, [], {}, CAPS, 1)
    assert [a.account_id for a in ranked] == ["a", "b", "c", "d", "e", "r"]
    assert [a.score for a in ranked] == [60] * 5 + [15]


def test_accounts_calling_the_same_hour_for_hour_are_linked_and_near_misses_are_not() -> None:
    pattern = [(T0 + i * H, 3 + i % 4) for i in range(14)]  # 14 active hours, calls varying by hour
    hours = [HourUse(a, hour, calls, 1_000_000) for a in ("acc_s1", "acc_s2", "acc_s3") for hour, calls in pattern]
    hours += [HourUse("acc_near", hour, calls + (i == 5), 1_000_000) for i, (hour, calls) in enumerate(pattern)]
    hours += [HourUse(a, hour, calls, 1_000_000) for a in ("acc_few1", "acc_few2") for hour, calls in pattern[:11]]
    listed = {a.account_id: a for a in score([], [], hours, {}, CAPS, min_score=1)}
    assert set(listed) == {"acc_s1", "acc_s2", "acc_s3"}  # one call off, or fewer than 12 hours: nothing
    [signal] = listed["acc_s1"].signals
    assert signal.kind == "identical_usage" and signal.score == 40
    assert signal.accounts == ["acc_s2", "acc_s3"] and signal.count == sum(c for _, c in pattern)
    assert (signal.first_seen, signal.last_seen) == (T0, T0 + 14 * H)
