"""When a payment's plan takes effect, what it and a top-up record, and when a paid plan ends."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.months import add_months
from libs.pricing.money import to_micros
from proto.v1 import RecordPayment, TopUpBalance
from services.billing.domain import Refused, Subscription, record_payment, subscription_at, top_up
from services.quota.domain.admission import AccountQuota
from services.quota.domain.periods import Segment

PRICES = {"free": 0, "pro": to_micros("20"), "max": to_micros("100"), "ultra": to_micros("200")}
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
MAX_ENDS = NOW + timedelta(days=20)
PAID_MAX = Subscription(NOW - timedelta(days=10), "max", MAX_ENDS)
LAPSED_MAX = Subscription(NOW - timedelta(days=40), "max", NOW - timedelta(days=9))
REFUNDED = Subscription(NOW - timedelta(days=1), "free", None)


def pay(plan: str, ref: str = "r", amount: str = "1", paid_at: datetime | None = None) -> RecordPayment:
    return RecordPayment(account_id="acc", plan=plan, amount_micros=to_micros(amount), payment_ref=ref, paid_at=paid_at)


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
    with pytest.raises(Refused) as refused:
        record_payment(command, [], PRICES, NOW)
    assert refused.value.field == field and refused.value.code == "invalid_request"


def test_a_top_up_credits_a_positive_amount_and_its_ref_makes_it_one_event() -> None:
    first = top_up(TopUpBalance(account_id="acc", amount_micros=5, topup_ref="t"), NOW)
    assert first == top_up(TopUpBalance(account_id="acc", amount_micros=5, topup_ref="t"), NOW)
    unnamed = [top_up(TopUpBalance(account_id="acc", amount_micros=5), NOW) for _ in range(2)]
    assert unnamed[0].event_id != unnamed[1].event_id
    with pytest.raises(Refused) as refused:
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
