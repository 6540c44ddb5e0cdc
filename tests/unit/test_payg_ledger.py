"""PAYG admission against the balance, as a property: whatever the order of top-ups, admissions
and settlements, the balance is the ledger's sum and never goes below zero by more than what
admitted calls cost beyond their estimates."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.pricing.catalog import load_catalog
from services.quota.domain.admission import AccountQuota, Limits, admit
from services.quota.domain.periods import Segment
from services.quota.reservations import Reservations

CATALOG = load_catalog()
PLAN = CATALOG.plan("free")
MODEL = CATALOG.models["deepseek/deepseek-chat"]
LIMITS = {p.id: Limits(*p.limits_micros) for p in CATALOG.plans.values()}
T0 = datetime(2026, 1, 1, tzinfo=UTC)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("top_up"), st.integers(1, 5_000)),
        st.tuples(st.just("call"), st.integers(1, 2_000)),  # the call's estimate, micro-USD
        st.tuples(st.just("settle"), st.integers(0, 200)),  # actual cost as % of the estimate
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_balance_is_the_ledger_sum_and_overdraws_only_by_overruns(ops: list[tuple[str, int]]) -> None:
    account = AccountQuota(T0, [Segment(T0, "free", T0, "created")])
    reservations = Reservations()
    ledger: list[int] = []
    in_flight: list[tuple[str, int]] = []
    overrun = 0
    now = T0
    for n, (op, value) in enumerate(ops):
        now += timedelta(minutes=1)  # one call a minute: the RPM limit never refuses here
        if op == "top_up":
            ledger.append(value)
            account.balance += value
        elif op == "call":
            admission = admit(
                account, PLAN, MODEL, billing_mode="payg", rate_tat=None, reserved=0,
                payg_reserved=reservations.total("a"), estimate_usd=value, limits_by_plan=LIMITS, now=now,
            )  # fmt: skip
            covered = account.balance - reservations.total("a") >= value
            assert admission.admitted == covered
            assert admission.billing_mode == "payg"
            if admission.admitted:
                reservations.hold("a", str(n), value, now)
                in_flight.append((str(n), value))
            else:
                assert admission.reason == "insufficient_balance"
        elif in_flight:
            rid, estimate = in_flight.pop(0)
            cost = estimate * value // 100
            ledger.append(-cost)
            account.balance -= cost
            reservations.release("a", rid)
            overrun += max(0, cost - estimate)
        assert account.balance == sum(ledger)
        assert account.balance >= -overrun


def test_payg_calls_may_use_every_model_and_subscription_calls_only_the_plans() -> None:
    account = AccountQuota(T0, [Segment(T0, "free", T0, "created")])
    account.balance = 1_000_000
    outside = CATALOG.models["anthropic/claude-sonnet-4.5"]
    assert outside.tier not in PLAN.tiers

    def ask(billing_mode: str) -> tuple[bool, str | None, str | None]:
        admission = admit(
            account, PLAN, outside, billing_mode=billing_mode, rate_tat=None, reserved=0, payg_reserved=0,
            estimate_usd=1_000, limits_by_plan=LIMITS, now=T0,
        )  # fmt: skip
        return admission.admitted, admission.billing_mode, admission.reason

    assert ask("payg") == (True, "payg", None)
    assert ask("subscription") == (False, None, "model_not_in_plan")
    account.extra_usage = True  # overflow bills the balance, but only for the plan's own models
    assert ask("subscription") == (False, None, "model_not_in_plan")
