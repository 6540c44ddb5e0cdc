"""Admission: used + reserved < cap on the 5-hour window, the week and the month."""

from datetime import UTC, datetime, timedelta

import pytest

from services.quota.domain.admission import AccountQuota, Limits, decide, view
from services.quota.domain.periods import Segment
from services.quota.domain.windows import Window

M = 1_000_000  # micro-Flows per Flow
LIMITS = {
    "free": Limits(5 * M, 50_400_000, 216 * M),
    "pro": Limits(50 * M, 504 * M, 2160 * M),
    "max": Limits(300 * M, 3024 * M, 12960 * M),
}
CREATED = datetime(2025, 5, 1, tzinfo=UTC)
NOW = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
PERIOD_START = CREATED.replace(month=5)  # pro anchored at creation: May 1 .. Jun 1
PERIOD_END = datetime(2025, 6, 1, tzinfo=UTC)


def account(
    *,
    w5: Window | None = None,
    week: Window | None = None,
    month_used: int = 0,
    plan: str = "pro",
) -> AccountQuota:
    quota = AccountQuota(
        created_at=CREATED, segments=[Segment(CREATED, plan, CREATED, "e0")], window_5h=w5, weekly=week
    )
    if month_used:
        quota.months[PERIOD_START] = month_used
    return quota


def w5(used: int, started_ago: timedelta = timedelta(hours=1)) -> Window:
    start = NOW - started_ago
    return Window(start, start + timedelta(hours=5), used)


def wk(used: int, started_ago: timedelta = timedelta(days=1)) -> Window:
    start = NOW - started_ago
    return Window(start, start + timedelta(days=7), used)


def test_fresh_account_is_admitted_and_has_no_open_window():
    decision = decide(account(), LIMITS, 0, NOW)
    assert decision.admitted
    assert decision.reason is None
    assert decision.retry_after_s is None
    q = decision.view
    assert q.plan == "pro"
    assert (q.window_5h.used, q.window_5h.limit, q.window_5h.started_at, q.window_5h.resets_at) == (
        0,
        50 * M,
        None,
        None,
    )
    assert (q.weekly.used, q.weekly.limit, q.weekly.started_at, q.weekly.resets_at) == (
        0,
        504 * M,
        None,
        None,
    )
    assert (q.monthly.used, q.monthly.limit) == (0, 2160 * M)
    assert (q.monthly.started_at, q.monthly.resets_at) == (PERIOD_START, PERIOD_END)


def test_view_reports_the_open_windows_and_the_month():
    q = view(account(w5=w5(7 * M), week=wk(70 * M), month_used=700 * M), LIMITS, 3 * M, NOW)
    assert (q.window_5h.used, q.window_5h.reserved) == (7 * M, 3 * M)
    assert (q.window_5h.started_at, q.window_5h.resets_at) == (
        NOW - timedelta(hours=1),
        NOW + timedelta(hours=4),
    )
    assert (q.weekly.used, q.weekly.reserved) == (70 * M, 3 * M)
    assert q.weekly.resets_at == NOW + timedelta(days=6)
    assert (q.monthly.used, q.monthly.reserved) == (700 * M, 3 * M)


def test_admitted_just_below_the_5h_cap_and_refused_at_it():
    assert decide(account(w5=w5(50 * M - 1)), LIMITS, 0, NOW).admitted
    refused = decide(account(w5=w5(50 * M)), LIMITS, 0, NOW)
    assert not refused.admitted
    assert refused.reason == "quota_exhausted"
    assert refused.retry_after_s == 4 * 3600


def test_used_plus_reserved_counts():
    assert decide(account(w5=w5(40 * M)), LIMITS, 10 * M - 1, NOW).admitted
    refused = decide(account(w5=w5(40 * M)), LIMITS, 10 * M, NOW)
    assert not refused.admitted
    assert refused.reason == "quota_exhausted"


def test_a_call_that_crossed_the_cap_blocks_later_ones():
    refused = decide(account(w5=w5(50 * M + 123_456)), LIMITS, 0, NOW)
    assert not refused.admitted
    assert refused.view.window_5h.used == 50 * M + 123_456


def test_retry_after_is_the_ceiling_of_the_seconds_until_the_window_resets():
    start = NOW - timedelta(hours=5) + timedelta(seconds=100, microseconds=200_000)  # ends in 100.2 s
    refused = decide(account(w5=Window(start, start + timedelta(hours=5), 50 * M)), LIMITS, 0, NOW)
    assert refused.retry_after_s == 101
    start = NOW - timedelta(hours=5) + timedelta(microseconds=1)  # ends in 1 us
    assert decide(account(w5=Window(start, start + timedelta(hours=5), 50 * M)), LIMITS, 0, NOW).retry_after_s == 1


def test_weekly_cap_blocks_with_room_in_the_5h_window():
    refused = decide(account(w5=w5(1 * M), week=wk(504 * M, started_ago=timedelta(days=2))), LIMITS, 0, NOW)
    assert not refused.admitted
    assert refused.reason == "quota_exhausted"
    assert refused.retry_after_s == 5 * 24 * 3600


def test_monthly_cap_blocks_until_the_period_ends():
    refused = decide(account(month_used=2160 * M), LIMITS, 0, NOW)
    assert not refused.admitted
    assert refused.reason == "quota_exhausted"
    assert refused.retry_after_s == int((PERIOD_END - NOW).total_seconds())


def test_usage_of_another_monthly_period_does_not_count():
    quota = account()
    quota.months[datetime(2025, 4, 1, tzinfo=UTC)] = 5000 * M
    assert decide(quota, LIMITS, 0, NOW).admitted


def test_when_several_windows_block_the_call_waits_for_the_last_of_them():
    refused = decide(account(w5=w5(50 * M), week=wk(504 * M, started_ago=timedelta(days=3))), LIMITS, 0, NOW)
    assert not refused.admitted
    assert refused.retry_after_s == 4 * 24 * 3600  # the week, not the 5 h window (4 h)


@pytest.mark.parametrize("ended_ago", [timedelta(0), timedelta(seconds=1), timedelta(days=1)])
def test_a_closed_window_counts_as_zero(ended_ago):
    end = NOW - ended_ago  # a window is closed from its end on
    closed_5h = Window(end - timedelta(hours=5), end, 50 * M)
    closed_week = Window(end - timedelta(days=7), end, 504 * M)
    decision = decide(account(w5=closed_5h, week=closed_week), LIMITS, 0, NOW)
    assert decision.admitted
    assert decision.view.window_5h.used == 0
    assert decision.view.window_5h.resets_at is None
    assert decision.view.weekly.used == 0
    assert decision.view.weekly.started_at is None


def test_reservations_alone_can_block():
    refused = decide(account(), LIMITS, 50 * M, NOW)
    assert not refused.admitted
    assert refused.reason == "quota_exhausted"
    assert refused.view.window_5h.used == 0
    # no window is open: in-flight calls report within seconds
    assert refused.retry_after_s == 1
    assert decide(account(), LIMITS, 50 * M - 1, NOW).admitted


def test_limits_follow_the_plan_in_force_now():
    upgraded = AccountQuota(
        created_at=CREATED,
        segments=[
            Segment(CREATED, "free", CREATED, "e0"),
            Segment(NOW - timedelta(hours=2), "max", NOW, "e1"),
        ],
        window_5h=w5(60 * M),
    )
    decision = decide(upgraded, LIMITS, 0, NOW)
    assert decision.admitted  # 60 Flows is over Free's 5 but under Max's 300
    assert decision.view.plan == "max"
    assert decision.view.window_5h.limit == 300 * M
    before = decide(upgraded, LIMITS, 0, NOW - timedelta(hours=3))
    assert before.view.plan == "free"
    assert before.view.window_5h.limit == 5 * M


def test_estimate_in_usd_gives_flows_at_the_rate_and_multiplier_and_the_other_way() -> None:
    from fractions import Fraction

    from services.quota.domain.admission import Estimate, estimate

    rate, twice = Fraction(1, 100), Fraction(2)  # $0.01 per Flow, a multiplier of 2
    assert estimate(0, 20_000, rate, twice) == Estimate(flows=1_000_000, usd=20_000)
    assert estimate(1_000_000, 0, rate, twice) == Estimate(flows=1_000_000, usd=20_000)
    assert estimate(0, 1, Fraction(3, 1000), Fraction(1)) == Estimate(flows=333, usd=1)  # half up


def test_estimate_in_integers_rounds_exactly_as_the_fractions_did() -> None:
    """estimate() works on the rate's numerator and denominator (no Fraction per operation): over
    random rates, multipliers and amounts, halves included, it gives what the Fraction formula gave."""
    import random
    from fractions import Fraction

    from libs.pricing.money import round_half_up
    from services.quota.domain.admission import Estimate, estimate

    rng = random.Random(14)
    rates = [Fraction(5, 198), Fraction(1, 100), Fraction(3, 1000), Fraction(10, 396), Fraction(1, 2)]
    multipliers = [Fraction(1), Fraction(2), Fraction(1, 2), Fraction(3, 2), Fraction(7, 10)]
    for _ in range(5000):
        rate, multiplier = rng.choice(rates), rng.choice(multipliers)
        flows, usd = rng.randrange(0, 10**9), rng.choice([0, rng.randrange(1, 10**7)])
        by_fractions = Estimate(
            round_half_up(Fraction(usd) / (rate * multiplier)) if usd > 0 else flows,
            usd or round_half_up(flows * rate * multiplier),
        )
        assert estimate(flows, usd, rate, multiplier) == by_fractions, (flows, usd, rate, multiplier)
    assert estimate(0, 1, Fraction(1, 2), Fraction(1)) == Estimate(flows=2, usd=1)  # 2 exactly
    assert estimate(1, 0, Fraction(1, 2), Fraction(1)) == Estimate(flows=1, usd=1)  # 0.5 rounds up


def test_room_left_counts_this_calls_reservation_only_on_the_subscription() -> None:
    from services.quota.domain.admission import Admission, QuotaView, WindowView, flows_remaining

    w5 = WindowView(used=10 * M, limit=50 * M, reserved=5 * M, started_at=None, resets_at=None)
    quota = QuotaView("pro", w5, w5, w5)
    assert flows_remaining(Admission(True, "subscription", None, None, quota, None), 2 * M) == 33 * M
    assert flows_remaining(Admission(True, "payg", None, None, quota, None), 2 * M) == 35 * M
    assert flows_remaining(Admission(True, "subscription", None, None, quota, None), 40 * M) == 0  # never below 0
    assert flows_remaining(Admission(False, None, "unknown_model", None, None, None), 2 * M) == 0
