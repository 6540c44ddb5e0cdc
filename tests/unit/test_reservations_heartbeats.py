"""The gateway's registry of calls in flight and what quota makes of its heartbeats."""

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any, cast

import msgspec

from libs.clock import ManualClock
from libs.settings import load_settings
from proto.v1 import GatewayHeartbeat, InflightCall, RateLimit, encode
from services.gateway import inflight as gateway_inflight
from services.gateway.inflight import InflightCalls
from services.quota.domain.admission import AccountQuota
from services.quota.domain.periods import Segment
from services.quota.domain.ratelimit import gcra
from services.quota.inflight import InflightTracker
from services.quota.state import QuotaState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RATE = Fraction(10, 396)  # 1/39.6 USD per Flow


def call(rid: str, mode: str = "subscription", usd: int = 1000, account: str = "acc") -> InflightCall:
    return InflightCall(
        account_id=account, reservation_id=rid, billing_mode=mode,  # type: ignore[arg-type]
        estimated_usd_micros=usd, admitted_at=T0,
    )  # fmt: skip


def tracker(state: QuotaState, clock: ManualClock) -> InflightTracker:
    return InflightTracker(state, load_settings({}), clock, cast(Any, None), cast(Any, None), "quota")


def state_with_account(multiplier: Fraction = Fraction(1)) -> QuotaState:
    state = QuotaState(RATE)
    account = AccountQuota(T0, [Segment(T0, "free", T0, "e0")])
    account.with_multiplier("m", T0, multiplier)
    state.accounts["acc"] = account
    return state


def test_the_registry_lists_calls_until_they_end_and_beats_in_batches(monkeypatch: Any) -> None:
    calls = InflightCalls(ManualClock(T0), "gw-test")
    for i in range(5):
        calls.admitted(call(f"r{i}"))
    calls.ended("r1")
    calls.ended("r1")  # twice is harmless
    [beat] = calls.heartbeats(T0)
    assert beat.gateway_id == "gw-test" and [c.reservation_id for c in beat.calls] == ["r0", "r2", "r3", "r4"]
    monkeypatch.setattr(gateway_inflight, "CALLS_PER_MESSAGE", 3)
    beats = calls.heartbeats(T0)
    assert [len(b.calls) for b in beats] == [3, 1]
    decoded = msgspec.json.decode(encode(beats[0]), type=GatewayHeartbeat)
    assert decoded == beats[0]
    for rid in ("r0", "r2", "r3", "r4"):
        calls.ended(rid)
    assert [b.calls for b in calls.heartbeats(T0)] == [[]]  # an empty beat still says "alive"


def test_the_registry_keeps_each_accounts_latest_rate_state_while_it_lies_ahead() -> None:
    calls = InflightCalls(ManualClock(T0))
    calls.rate_seen("a", RateLimit(limit=10, remaining=9, reset_s=6.0), T0)
    calls.rate_seen("a", RateLimit(limit=10, remaining=9, reset_s=3.0), T0)  # an older answer: kept the later
    calls.rate_seen("b", None, T0)
    assert calls.heartbeats(T0)[0].rate_tats == {"a": T0 + timedelta(seconds=6)}
    assert calls.heartbeats(T0 + timedelta(seconds=6))[0].rate_tats == {}


def test_where_quota_does_not_answer_it_holds_the_listed_calls_at_their_estimates() -> None:
    state, clock = state_with_account(Fraction(5, 4)), ManualClock(T0)
    t = tracker(state, clock)
    state.released_while_rebuilding = {"done"}
    t.heard(GatewayHeartbeat(gateway_id="g", sent_at=T0, calls=[
        call("sub", usd=1000), call("pay", "payg", 2500), call("done", usd=9999),
    ]))  # fmt: skip
    # 1000 micro-USD at 1/39.6 USD per Flow and a 1.25 multiplier: 31,680 micro-Flows
    assert state.reservations.total("acc") == 31_680 and state.reservations.held("acc") == ["sub"]
    assert state.payg_reservations.total("acc") == 2500


def test_where_quota_answers_heartbeats_only_renew_what_it_admitted() -> None:
    state, clock = state_with_account(), ManualClock(T0)
    t = tracker(state, clock)
    t.ready_for = lambda _account: True  # the account's partition is owned and answered for here
    state.reservations.hold("acc", "sub", 40, T0)
    clock.advance(timedelta(seconds=30))
    t.heard(GatewayHeartbeat(gateway_id="g", sent_at=T0, calls=[call("sub"), call("gone-already")]))
    assert state.reservations.held("acc") == ["sub"]  # a call whose usage was counted is not held again
    assert state.reservations.unrenewed(clock.now() - timedelta(seconds=1)) == []


def test_the_rate_limit_state_rebuilt_from_the_gateways_refuses_what_the_old_one_would() -> None:
    """Quota's answers -> a gateway's registry -> a heartbeat -> a fresh quota: the same GCRA time."""
    calls, now = InflightCalls(ManualClock(T0)), T0
    tat = None
    for _ in range(7):
        decision = gcra(tat, now, 10)
        tat = decision.tat
        calls.rate_seen("acc", RateLimit(limit=10, remaining=decision.remaining, reset_s=decision.reset_s), now)
        now += timedelta(milliseconds=300)
    state = state_with_account()
    t = tracker(state, ManualClock(now))
    t.heard(calls.heartbeats(now)[0])
    rebuilt = state.rate_limits["acc"]
    assert rebuilt == tat
    allowed_before = allowed_after = 0
    old, new = tat, rebuilt
    for _ in range(10):
        a, b = gcra(old, now, 10), gcra(new, now, 10)
        allowed_before += a.allowed
        allowed_after += b.allowed
        old, new = (a.tat if a.allowed else old), (b.tat if b.allowed else new)
    assert allowed_before == allowed_after == 3  # 10 per burst, 7 taken


def test_only_the_partitions_runner_up_holds_copies_of_its_calls() -> None:
    """One standby per partition (the instance that takes it over if its owner leaves) does the work
    of holding its calls from the heartbeats; every other instance ignores them."""
    beat = GatewayHeartbeat(
        gateway_id="g", sent_at=T0, calls=[call("sub")], rate_tats={"acc": T0 + timedelta(seconds=9)}
    )
    elsewhere, runner_up = state_with_account(), state_with_account()
    for state, copying in ((elsewhere, False), (runner_up, True)):
        t = tracker(state, ManualClock(T0))
        t.copying = lambda _account, copying=copying: copying  # type: ignore[misc]
        t.heard(beat)
    assert elsewhere.reservations.held("acc") == [] and "acc" not in elsewhere.rate_limits
    assert runner_up.reservations.held("acc") == ["sub"] and runner_up.rate_limits["acc"] == T0 + timedelta(seconds=9)
