"""The refund formula and eligibility, as the product page's table has them (micro-USD)."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.pricing.money import micros_to_usd
from services.refund.domain import (
    Lines,
    Payment,
    Period,
    PlanSpan,
    cancel_refusal,
    lines,
    not_started,
    payment_period,
    plan_at,
    refunded_before,
    refusal,
)

USD = 1_000_000
PAID_AT = datetime(2026, 11, 1, 12, tzinfo=UTC)
PRO = Payment("pay_1", "pro", PAID_AT, 20 * USD)


@pytest.mark.parametrize(
    ("paid", "usage", "before", "expected"),
    [
        # usage below the payment: 20 − 1.234567 = 18.765433; 95% = 17.82716135 → 17.83; fee what remains
        (20 * USD, 1_234_567, 0, Lines(20 * USD, 1_234_567, 0, 18_765_433, 935_433, 17_830_000)),
        # no usage at all: 5% of 20.00 is exactly 1.00
        (20 * USD, 0, 0, Lines(20 * USD, 0, 0, 20 * USD, 1 * USD, 19 * USD)),
        # usage equal to the payment: nothing to refund
        (20 * USD, 20 * USD, 0, Lines(20 * USD, 20 * USD, 0, 0, 0, 0)),
        # usage above the payment: nothing to refund (never negative)
        (20 * USD, 25 * USD, 0, Lines(20 * USD, 25 * USD, 0, -5 * USD, 0, 0)),
        # a previous partial refund: 20 − 1 − 5 = 14; 95% = 13.30
        (20 * USD, 1 * USD, 5 * USD, Lines(20 * USD, 1 * USD, 5 * USD, 14 * USD, 700_000, 13_300_000)),
        # earlier refunds and usage together use it all up
        (20 * USD, 15 * USD, 5 * USD, Lines(20 * USD, 15 * USD, 5 * USD, 0, 0, 0)),
        # fee rounding: 95% of 0.10 is 0.095, a half cent, rounded up once at the end → 0.10, fee 0
        (100_000, 0, 0, Lines(100_000, 0, 0, 100_000, 0, 100_000)),
        # 95% of 0.30 = 0.285 → 0.29 (half up), fee 0.01
        (300_000, 0, 0, Lines(300_000, 0, 0, 300_000, 10_000, 290_000)),
        # 95% of 0.2 = 0.19 exactly
        (200_000, 0, 0, Lines(200_000, 0, 0, 200_000, 10_000, 190_000)),
        # just under a half cent rounds down: 95% of 0.104 = 0.0988 → 0.10; of 0.094 = 0.0893 → 0.09
        (94_000, 0, 0, Lines(94_000, 0, 0, 94_000, 4_000, 90_000)),
        # a refund never rounds up past what is refundable: 95% of 0.009 = 0.00855 would round to 0.01
        (9_000, 0, 0, Lines(9_000, 0, 0, 9_000, 9_000, 0)),
        # a sub-cent usage line keeps the micro-USD exact: 20 − 0.000001
        (20 * USD, 1, 0, Lines(20 * USD, 1, 0, 19_999_999, 999_999, 19 * USD)),
    ],
)
def test_the_refund_formula(paid: int, usage: int, before: int, expected: Lines) -> None:
    result = lines(paid, usage, before)
    assert result == expected
    assert result.paid - result.usage - result.refunded_before == result.refundable
    if result.refundable > 0:
        assert result.refundable - result.fee == result.amount  # the lines add up
        assert result.amount % 10_000 == 0  # whole cents are paid back
        assert 0 <= result.amount <= result.refundable


@pytest.mark.parametrize(
    ("payment", "plan_now", "statuses", "usage", "after", "reason"),
    [
        (PRO, "pro", [], 0, timedelta(hours=1), None),
        (PRO, "pro", ["failed"], 0, timedelta(hours=1), None),  # a failed refund may be asked for again
        (PRO, "pro", ["cancelled"], 0, timedelta(hours=1), None),
        (PRO, "pro", [], 0, timedelta(hours=24), None),  # the 24th hour still counts
        (PRO, "pro", [], 0, timedelta(hours=24, seconds=1), "window_passed"),
        (PRO, "pro", [], 0, timedelta(hours=25), "window_passed"),
        (None, "free", [], 0, timedelta(hours=1), "free_plan"),
        (PRO, "free", [], 0, timedelta(hours=1), "free_plan"),
        (PRO, "free", ["succeeded"], 0, timedelta(hours=1), "already_refunded"),
        (PRO, "pro", ["processing"], 0, timedelta(hours=1), "refund_in_progress"),
        (PRO, "pro", [], 20 * USD, timedelta(hours=1), "usage_exceeds_payment"),
        (PRO, "pro", [], 30 * USD, timedelta(hours=1), "usage_exceeds_payment"),
        (PRO, "pro", [], 20 * USD - 9_000, timedelta(hours=1), "nothing_to_refund"),
    ],
)
def test_who_may_have_a_refund(
    payment: Payment | None, plan_now: str, statuses: list[str], usage: int, after: timedelta, reason: str | None
) -> None:
    result = lines(payment.amount_micros, usage, 0) if payment else None
    assert refusal(payment, plan_now, statuses, result, PAID_AT + after) == reason


def test_the_plan_in_force() -> None:
    month = timedelta(days=30)
    spans = [
        PlanSpan(PAID_AT, "pro", PAID_AT + month),
        PlanSpan(PAID_AT + timedelta(days=2), "free", None),  # refunded: Free at once
    ]
    assert plan_at([], PAID_AT) == "free"
    assert plan_at(spans[:1], PAID_AT - timedelta(seconds=1)) == "free"
    assert plan_at(spans[:1], PAID_AT) == "pro"
    assert plan_at(spans[:1], PAID_AT + month) == "free"  # the paid month ended unrenewed
    assert plan_at(spans, PAID_AT + timedelta(days=2)) == "free"


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (20 * USD, "20.00"),
        (1_234_567, "1.234567"),
        (500_000, "0.50"),
        (-500_000, "-0.50"),
        (1, "0.000001"),
        (0, "0.00"),
    ],
)
def test_money_strings_show_cents_and_every_micro_that_is_not_zero(micros: int, text: str) -> None:
    assert micros_to_usd(micros) == text


@pytest.mark.parametrize(
    ("status", "payout_started", "reason"),
    [
        ("processing", False, None),
        ("processing", True, "payout_started"),  # money is on its way
        ("succeeded", True, "already_succeeded"),
        ("failed", True, "already_failed"),
        ("cancelled", False, "already_cancelled"),
    ],
)
def test_a_refund_can_be_cancelled_only_before_its_payout_starts(
    status: str, payout_started: bool, reason: str | None
) -> None:
    assert cancel_refusal(status, payout_started) == reason


def test_only_succeeded_refunds_count_as_refunded_before() -> None:
    refunds = [("failed", 1_000_000), ("cancelled", 2_000_000), ("succeeded", 3_000_000), ("processing", 4_000_000)]
    assert refunded_before(refunds) == 3_000_000
    assert refunded_before([]) == 0


def test_the_usage_counted_is_that_of_the_period_the_payment_paid_for() -> None:
    month_end = PAID_AT + timedelta(days=30)
    assert payment_period(PRO, PlanSpan(PAID_AT, "pro", month_end)) == Period(PAID_AT, month_end)
    created = PAID_AT + timedelta(hours=25)  # paid before the account existed: from its creation
    assert payment_period(PRO, PlanSpan(created, "pro", month_end)).start == created
    scheduled = PlanSpan(PAID_AT + timedelta(days=12), "pro", PAID_AT + timedelta(days=43))  # a downgrade
    assert payment_period(PRO, scheduled) == Period(scheduled.effective_at, scheduled.paid_until)
    assert payment_period(PRO, None) == Period(PAID_AT, None)  # a change recorded without its payment


def test_a_payment_whose_plan_has_not_started_is_withdrawn_not_dropped_to_free() -> None:
    scheduled = PlanSpan(PAID_AT + timedelta(days=12), "pro", PAID_AT + timedelta(days=43))
    assert not_started(scheduled, PAID_AT + timedelta(hours=1))
    assert not not_started(scheduled, scheduled.effective_at)  # from then on it runs: a refund drops to Free
    assert not not_started(PlanSpan(PAID_AT, "pro", None), PAID_AT + timedelta(hours=1))
    assert not not_started(None, PAID_AT)
    # it is refundable while the plan in force now is a paid one, within 24 hours of its payment
    assert refusal(PRO, "max", [], lines(PRO.amount_micros, 0, 0), PAID_AT + timedelta(hours=1)) is None
