"""The insider rules, pure: which multiplier prices a call (explicit > insider > 1), the insider
history over time, and when a paid subscription first lapsed to Free (billing's decision)."""

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from libs.pricing.flows import Versioned
from libs.pricing.multipliers import InsiderHistory, effective_multiplier, multiplier_at
from services.billing.domain import Subscription, first_lapse, insider_ended

T0 = datetime(2026, 3, 1, tzinfo=UTC)
D = timedelta(days=1)
INSIDER = Fraction(5, 4)


def test_the_explicit_multiplier_wins_else_the_insider_one_while_insider_else_one() -> None:
    assert effective_multiplier(Fraction(1), False, INSIDER) == 1
    assert effective_multiplier(Fraction(1), True, INSIDER) == INSIDER
    assert effective_multiplier(Fraction(4, 5), True, INSIDER) == Fraction(4, 5)
    assert effective_multiplier(Fraction(3, 2), False, INSIDER) == Fraction(3, 2)


@given(st.fractions(min_value=Fraction(1, 10), max_value=10), st.booleans())
def test_an_explicit_multiplier_other_than_standard_always_wins(explicit: Fraction, insider: bool) -> None:
    expected = explicit if explicit != 1 else (INSIDER if insider else 1)
    assert effective_multiplier(explicit, insider, INSIDER) == expected


def test_insider_history_is_dated_and_idempotent() -> None:
    history = InsiderHistory()
    history.add("set", T0, True)
    history.add("ended", T0 + 30 * D, False)
    history.add("set", T0 + 40 * D, False)  # the same event id again changes nothing
    assert not history.at(T0 - D) and history.at(T0) and history.at(T0 + 29 * D) and not history.at(T0 + 30 * D)
    copy = history.copy()
    copy.add("again", T0 + 50 * D, True)
    assert not history.at(T0 + 51 * D) and copy.at(T0 + 51 * D)
    explicit = Versioned(Fraction(1))
    assert multiplier_at(explicit, history, INSIDER, T0 + D) == INSIDER
    assert multiplier_at(explicit, history, INSIDER, T0 + 31 * D) == 1


def test_the_first_lapse_is_a_month_that_ended_unrenewed_or_a_drop_to_free() -> None:
    month = Subscription(T0, "pro", T0 + 31 * D)
    assert first_lapse([month], T0, T0 + 10 * D) is None  # unbroken so far
    assert first_lapse([month], T0, T0 + 40 * D) == T0 + 31 * D
    renewed = Subscription(T0 + 30 * D, "pro", T0 + 61 * D)  # paid before the month ended: no gap
    assert first_lapse([month, renewed], T0, T0 + 40 * D) is None
    downgrade = Subscription(T0 + 31 * D, "pro", T0 + 62 * D)  # scheduled for the end of the month
    assert first_lapse([Subscription(T0, "max", T0 + 31 * D), downgrade], T0, T0 + 40 * D) is None
    late = Subscription(T0 + 35 * D, "pro", T0 + 66 * D)  # paid four days after the month ended
    assert first_lapse([month, late], T0, T0 + 40 * D) == T0 + 31 * D
    refunded = Subscription(T0 + D, "free", None)
    assert first_lapse([month, refunded], T0, T0 + 5 * D) == T0 + D
    assert first_lapse([month], T0 + 32 * D, T0 + 40 * D) is None  # a lapse before the mark does not count


def test_the_end_of_a_mark_is_one_event_whoever_decides_it_and_when() -> None:
    changes = [Subscription(T0, "pro", T0 + 31 * D)]
    first = insider_ended("acc_a", "mark-1", T0, changes, T0 + 40 * D)
    again = insider_ended("acc_a", "mark-1", T0, changes, T0 + 90 * D)
    assert first is not None and first == again
    assert first.occurred_at == T0 + 31 * D and first.reason == "lapsed_to_free" and first.insider_status_id == "mark-1"
    other = insider_ended("acc_a", "mark-2", T0, changes, T0 + 40 * D)
    assert other is not None and other.event_id != first.event_id
    assert insider_ended("acc_a", "mark-1", T0, changes, T0 + 10 * D) is None
