"""When a payment's plan takes effect, and when a paid plan ends."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.months import add_months
from libs.pricing.money import to_micros
from services.ingress.admin import RecordPayment, record_payment
from services.ingress.directory import Subscription
from services.quota.domain.admission import AccountQuota
from services.quota.domain.periods import Segment

PRICES = {"free": 0, "pro": to_micros("20"), "max": to_micros("100"), "ultra": to_micros("200")}
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
FREE = Subscription(datetime(2026, 1, 1, tzinfo=UTC), "free", None)
PAID_MAX = Subscription(NOW - timedelta(days=10), "max", NOW + timedelta(days=20))


@pytest.mark.parametrize(
    ("current", "plan", "starts"),
    [
        (FREE, "pro", NOW),  # first payment: at once
        (PAID_MAX, "ultra", NOW),  # upgrade: at once
        (PAID_MAX, "max", NOW),  # renewal: at once, a new month from now
        (PAID_MAX, "pro", PAID_MAX.paid_until),  # downgrade: when the paid month ends
        (Subscription(NOW - timedelta(days=40), "max", NOW - timedelta(days=9)), "pro", NOW),  # lapsed: at once
    ],
)
def test_when_a_payment_takes_effect(current: Subscription, plan: str, starts: datetime) -> None:
    command = RecordPayment(plan=plan, amount_usd="1", payment_ref="r")
    payment, change = record_payment("acc", current, command, PRICES, NOW)
    assert payment.occurred_at == NOW and change.occurred_at == starts
    assert change.period_anchor == starts and change.paid_until == add_months(starts, 1)
    assert change.previous_plan == current.plan


def test_a_paid_plan_ends_at_its_paid_until() -> None:
    created = NOW - timedelta(days=90)
    account = AccountQuota(created, [
        Segment(created, "free", created, "a"),
        Segment(NOW - timedelta(days=40), "pro", NOW - timedelta(days=40), "b", NOW - timedelta(days=9)),
    ])  # fmt: skip
    assert account.plan_at(NOW - timedelta(days=10)) == "pro"
    assert account.plan_at(NOW - timedelta(days=9)) == "free"
    assert account.plan_at(NOW) == "free"
