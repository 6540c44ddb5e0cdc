"""Reservations: running totals, release, expiry."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.quota.reservations import Reservations

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_hold_release_and_expire() -> None:
    r = Reservations(timedelta(seconds=10))
    r.hold("a", "r1", 5, T0)
    r.hold("a", "r2", 7, T0 + timedelta(seconds=5))
    r.hold("b", "r3", 100, T0)
    assert r.total("a", T0) == 12 and r.total("b", T0) == 100
    r.hold("a", "r1", 6, T0)  # the same reservation again replaces it
    assert r.total("a", T0) == 13
    r.release("a", "r2")
    r.release("a", "nope")
    assert r.total("a", T0) == 6
    assert r.total("a", T0 + timedelta(seconds=10)) == 0  # expired
    assert r.total("c", T0) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["hold", "release", "total"]), st.integers(0, 5), st.integers(0, 50), st.integers(0, 30)
        ),
        max_size=60,
    )
)
def test_total_equals_a_recount(ops: list[tuple[str, int, int, int]]) -> None:
    timeout = timedelta(seconds=10)
    r = Reservations(timeout)
    model: dict[str, tuple[int, datetime]] = {}
    now = T0
    for op, rid, flows, advance in ops:
        now += timedelta(seconds=advance // 10)
        if op == "hold":
            r.hold("a", str(rid), flows, now)
            model[str(rid)] = (flows, now + timeout)
        elif op == "release":
            r.release("a", str(rid))
            model.pop(str(rid), None)
        else:
            assert r.total("a", now) == sum(f for f, expires in model.values() if expires > now)
