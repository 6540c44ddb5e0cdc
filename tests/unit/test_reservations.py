"""Reservations: running totals, release, renewal, and the barrier an ended call waits for."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.quota.reservations import Reservations

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


def test_hold_release_and_totals() -> None:
    r = Reservations()
    r.hold("a", "r1", 5, T0)
    r.hold("a", "r2", 7, T0 + 5 * S)
    r.hold("b", "r3", 100, T0)
    assert r.total("a") == 12 and r.total("b") == 100
    r.hold("a", "r1", 6, T0)  # the same reservation again replaces it
    assert r.total("a") == 13
    assert r.release("a", "r2") and not r.release("a", "nope")
    assert r.total("a") == 6 and r.total("c") == 0
    assert r.count() == 2 and r.held("a") == ["r1"]


def test_a_reservation_has_no_timeout_of_its_own() -> None:
    r = Reservations()
    r.hold("a", "r1", 5, T0)
    assert r.total("a") == 5  # whatever the time: only renewals, usage, releases and barriers change it
    assert r.unrenewed(T0) == [] and r.unrenewed(T0 + S) == [("a", "r1")]
    assert r.renew("a", "r1", T0 + 10 * S) and not r.renew("a", "r9", T0)
    assert r.unrenewed(T0 + 10 * S) == []


def test_an_unrenewed_reservation_waits_for_the_projection_to_reach_its_barrier() -> None:
    r = Reservations()
    r.hold("a", "r1", 5, T0)
    r.hold("a", "r2", 7, T0)
    r.wait_for("a", "r1", 2, 100, unrenewed_since=T0 + S)
    assert r.waiting() and r.total("a") == 12
    assert r.past_barriers({2: 99, 1: 500}) == []  # another partition's progress is not this one's
    assert r.total("a") == 12
    assert r.past_barriers({2: 100}) == [("a", "r1")]
    assert r.total("a") == 7 and not r.waiting()


def test_a_renewal_lifts_the_barrier_and_a_renewed_call_is_not_put_behind_one() -> None:
    r = Reservations()
    r.hold("a", "r1", 5, T0)
    r.wait_for("a", "r1", 0, 10, unrenewed_since=T0 + S)
    assert r.renew("a", "r1", T0 + 2 * S)  # its gateway lists it again: the call still runs
    assert r.past_barriers({0: 10}) == [] and r.total("a") == 5
    r.wait_for("a", "r1", 0, 10, unrenewed_since=T0 + S)  # renewed after the sweep looked: stays
    assert not r.waiting()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["hold", "release", "barrier", "pass", "renew"]), st.integers(0, 5),
                  st.integers(0, 50)),
        max_size=60,
    )
)  # fmt: skip
def test_total_equals_a_recount(ops: list[tuple[str, int, int]]) -> None:
    r = Reservations()
    model: dict[str, int] = {}
    barriers: dict[str, int] = {}
    for op, rid, n in ops:
        key = str(rid)
        if op == "hold":
            r.hold("a", key, n, T0)
            model[key] = n
            barriers.pop(key, None)
        elif op == "release":
            r.release("a", key)
            model.pop(key, None)
            barriers.pop(key, None)
        elif op == "renew":
            r.renew("a", key, T0)
            barriers.pop(key, None)
        elif op == "barrier" and key in model:
            r.wait_for("a", key, 0, n, unrenewed_since=T0 + S)
            barriers[key] = n
        elif op == "pass":
            r.past_barriers({0: n})
            for gone in [k for k, seq in barriers.items() if seq <= n]:
                model.pop(gone)
                barriers.pop(gone)
        assert r.total("a") == sum(model.values())
