"""When a payment's plan takes effect, what it and a top-up record, and when a paid plan ends."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.months import add_months
from libs.pricing.money import to_micros
from libs.refusal import Refusal
from proto.v1 import RecordPayment, TopUpBalance
from services.billing.domain import Subscription, record_payment, subscription_at, top_up
from services.quota.domain.admission import AccountQuota
from services.quota.domain.periods import Segment

PRICES = {"free": 0, "pro": to_micros("20"), "max": to_micros("100"), "ultra": to_micros("200")}
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
MAX_ENDS = NOW + timedelta(days=20)
PAID_MAX = Subscription(NOW - timedelta(days=10), "max", MAX_ENDS)
LAPSED_MAX = Subscription(NOW - timedelta(days=40), "max", NOW - timedelta(days=9))
REFUNDED = Subscription(NOW - timedelta(days=1), "free", None)


def pay(
    plan: str, ref: str = "r", amount: str | None = None, paid_at: datetime | None = None, override: bool = False
) -> RecordPayment:
    """A payment of the plan's price, unless another amount is given."""
    micros = PRICES.get(plan, 0) if amount is None else to_micros(amount)
    return RecordPayment(
        account_id="acc", plan=plan, amount_micros=micros, payment_ref=ref, paid_at=paid_at, override=override
    )


@pytest.mark.parametrize(
    ("changes", "plan", "starts", "previous"),
    [
        ([], "pro", NOW, "free"),  # first payment: at once
        ([PAID_MAX], "ultra", NOW, "max"),  # upgrade: at once
        ([PAID_MAX], "max", NOW, "max"),  # renewal: at once, a new month from now
        ([PAID_MAX], "pro", MAX_ENDS, "max"),  # downgrade: when the paid month ends
        ([LAPSED_MAX], "pro", NOW, "free"),  # lapsed: at once
        ([PAID_MAX, REFUNDED], "pro", NOW, "free"),  # refunded to Free: at once
    ],
)
def test_when_a_payment_takes_effect(changes: list[Subscription], plan: str, starts: datetime, previous: str) -> None:
    payment, change = record_payment(pay(plan), changes, PRICES, NOW)
    assert payment.occurred_at == NOW and change.occurred_at == starts
    assert change.period_anchor == starts and change.paid_until == add_months(starts, 1)
    assert change.previous_plan == previous


def test_a_payment_is_decided_at_its_paid_at_and_its_ids_come_from_its_ref() -> None:
    paid_at = PAID_MAX.effective_at - timedelta(days=1)  # before the Max month began: on Free then
    payment, change = record_payment(pay("pro", paid_at=paid_at), [PAID_MAX], PRICES, NOW)
    assert (payment.occurred_at, change.occurred_at, change.previous_plan) == (paid_at, paid_at, "free")
    again, again_change = record_payment(pay("pro", paid_at=paid_at), [PAID_MAX], PRICES, NOW)
    assert (again.event_id, again_change.event_id) == (payment.event_id, change.event_id)
    other, _ = record_payment(pay("pro", ref="r2", paid_at=paid_at), [PAID_MAX], PRICES, NOW)
    assert other.event_id != payment.event_id


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (pay("gold"), "plan"),
        (pay("free"), "plan"),
        (pay("pro", amount="-1"), "amount_usd"),
        (pay("pro", paid_at=NOW + timedelta(seconds=1)), "paid_at"),
    ],
)
def test_a_bad_payment_is_refused_naming_the_field(command: RecordPayment, field: str) -> None:
    with pytest.raises(Refusal) as refused:
        record_payment(command, [], PRICES, NOW)
    assert refused.value.field == field and refused.value.code == "invalid_request"


def test_a_top_up_credits_a_positive_amount_and_its_ref_makes_it_one_event() -> None:
    first = top_up(TopUpBalance(account_id="acc", amount_micros=5, topup_ref="t"), NOW)
    assert first == top_up(TopUpBalance(account_id="acc", amount_micros=5, topup_ref="t"), NOW)
    unnamed = [top_up(TopUpBalance(account_id="acc", amount_micros=5), NOW) for _ in range(2)]
    assert unnamed[0].event_id != unnamed[1].event_id
    with pytest.raises(Refusal) as refused:
        top_up(TopUpBalance(account_id="acc", amount_micros=0), NOW)
    assert refused.value.field == "amount_usd"


def test_the_plan_in_force_is_free_before_any_payment_and_after_an_unpaid_end() -> None:
    assert subscription_at([], NOW) is None
    assert subscription_at([PAID_MAX], PAID_MAX.effective_at - timedelta(seconds=1)) is None
    assert subscription_at([PAID_MAX], NOW) == PAID_MAX
    assert subscription_at([PAID_MAX], MAX_ENDS) is None


def test_a_paid_plan_ends_at_its_paid_until() -> None:
    created = NOW - timedelta(days=90)
    account = AccountQuota(created, [
        Segment(created, "free", created, "a"),
        Segment(NOW - timedelta(days=40), "pro", NOW - timedelta(days=40), "b", NOW - timedelta(days=9)),
    ])  # fmt: skip
    assert account.plan_at(NOW - timedelta(days=10)) == "pro"
    assert account.plan_at(NOW - timedelta(days=9)) == "free"
    assert account.plan_at(NOW) == "free"


@pytest.mark.parametrize("amount", ["0", "19.99", "20.01", "100.00"])
def test_an_amount_other_than_the_price_needs_an_override(amount: str) -> None:
    with pytest.raises(Refusal) as refused:
        record_payment(pay("pro", amount=amount), [], PRICES, NOW)
    assert refused.value.field == "amount_usd" and "override" in refused.value.message
    payment, change = record_payment(pay("pro", amount=amount, override=True), [], PRICES, NOW)
    assert payment.amount_micros == to_micros(amount) and change.plan == "pro"
    exact, _ = record_payment(pay("pro", amount="20.00"), [], PRICES, NOW)  # the price needs none
    assert exact.amount_micros == PRICES["pro"]


def test_a_payment_dated_before_the_account_takes_effect_from_its_creation() -> None:
    created = NOW - timedelta(hours=1)
    paid_at = NOW - timedelta(hours=25)
    payment, change = record_payment(pay("pro", paid_at=paid_at), [], PRICES, NOW, created)
    assert payment.occurred_at == paid_at  # the refund window counts from here
    assert change.occurred_at == created and change.previous_plan == "free"
    assert change.period_anchor == paid_at and change.paid_until == add_months(paid_at, 1)  # the month paid for
    account = AccountQuota(created, sorted([
        Segment(created, "free", created, "created"),
        Segment(change.occurred_at, change.plan, change.period_anchor, change.event_id, change.paid_until),
    ]))  # fmt: skip
    assert account.plan_at(created) == "pro" and account.plan_at(NOW) == "pro"  # what quota will show
    assert account.plan_at(change.paid_until) == "free"
    later, later_change = record_payment(pay("pro", paid_at=NOW), [], PRICES, NOW, created)  # after creation: as ever
    assert later_change.occurred_at == later.occurred_at == NOW


def test_a_month_that_ended_before_the_account_began_gives_no_plan() -> None:
    created = NOW
    paid_at = NOW - timedelta(days=40)
    _, change = record_payment(pay("pro", paid_at=paid_at), [], PRICES, NOW, created)
    assert change.occurred_at == paid_at and change.paid_until == add_months(paid_at, 1) < created
    account = AccountQuota(created, sorted([
        Segment(created, "free", created, "created"),
        Segment(change.occurred_at, change.plan, change.period_anchor, change.event_id, change.paid_until),
    ]))  # fmt: skip
    assert account.plan_at(NOW) == "free"
