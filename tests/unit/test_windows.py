"""Rolling windows by event time: the greedy chain, and incremental add_usages as the quota
projection uses it (late, out-of-order, duplicated, batched usage gives the same chain)."""

import bisect
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK, Usage, Window, add_usages, chain, current

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


# --- chain ----------------------------------------------------------------------------------


def test_chain_first_usage_opens_a_window_of_exactly_the_duration():
    assert chain([Usage(at(0), 7)], FIVE_HOURS) == [Window(at(0), at(5), 7)]
    assert chain([Usage(at(0), 7)], ONE_WEEK) == [Window(at(0), at(24 * 7), 7)]
    assert chain([], FIVE_HOURS) == []


def test_chain_usage_inside_the_window_adds_to_it():
    usages = [Usage(at(0), 1), Usage(at(1), 2), Usage(at(4.99), 4)]
    assert chain(usages, FIVE_HOURS) == [Window(at(0), at(5), 7)]


def test_chain_usage_exactly_at_window_end_opens_a_new_window():
    usages = [Usage(at(0), 1), Usage(at(5), 2)]
    assert chain(usages, FIVE_HOURS) == [Window(at(0), at(5), 1), Window(at(5), at(10), 2)]


def test_chain_usage_a_microsecond_before_the_end_stays_in_the_window():
    end = at(5) - timedelta(microseconds=1)
    assert chain([Usage(at(0), 1), Usage(end, 2)], FIVE_HOURS) == [Window(at(0), at(5), 3)]


def test_chain_next_window_starts_at_the_next_usage_not_at_the_previous_end():
    usages = [Usage(at(0), 1), Usage(at(7.5), 2), Usage(at(12), 3), Usage(at(12.5), 4)]
    assert chain(usages, FIVE_HOURS) == [
        Window(at(0), at(5), 1),
        Window(at(7.5), at(12.5), 5),
        Window(at(12.5), at(17.5), 4),
    ]


def test_chain_equal_times_share_a_window():
    assert chain([Usage(at(3), 1), Usage(at(3), 2)], FIVE_HOURS) == [Window(at(3), at(8), 3)]


def test_current_is_the_window_while_it_is_open():
    w = Window(at(0), at(5), 1)
    assert current(w, at(0)) == w
    assert current(w, at(4.999)) == w
    assert current(w, at(5)) is None  # closed at its end
    assert current(None, at(0)) is None


# --- add_usages: examples ---------------------------------------------------------------------


def test_add_usage_exactly_at_the_last_window_end_opens_a_new_window():
    windows = [Window(at(0), at(5), 10)]
    assert add_usages(windows, [Usage(at(5), 3)], FIVE_HOURS) == (
        [Window(at(0), at(5), 10), Window(at(5), at(10), 3)],
        None,
    )


def test_add_usage_after_all_windows_appends_one():
    assert add_usages([], [Usage(at(1), 3)], FIVE_HOURS) == ([Window(at(1), at(6), 3)], None)


def test_add_late_usage_inside_an_existing_window_adds_to_it():
    windows = [Window(at(0), at(5), 10), Window(at(6), at(11), 20)]
    result, rechain = add_usages(windows, [Usage(at(2), 3)], FIVE_HOURS)
    assert rechain is None
    assert result == [Window(at(0), at(5), 13), Window(at(6), at(11), 20)]
    assert windows == [Window(at(0), at(5), 10), Window(at(6), at(11), 20)]  # input not mutated


def test_add_usage_at_an_existing_window_start_adds_to_it():
    windows = [Window(at(0), at(5), 10), Window(at(6), at(11), 20)]
    assert add_usages(windows, [Usage(at(6), 1)], FIVE_HOURS) == (
        [Window(at(0), at(5), 10), Window(at(6), at(11), 21)],
        None,
    )


def test_add_late_usage_in_a_gap_before_a_later_window_forces_a_rechain():
    windows = [Window(at(0), at(5), 10), Window(at(8), at(13), 20)]
    result, rechain = add_usages(windows, [Usage(at(6), 3)], FIVE_HOURS)
    assert rechain == at(6)
    assert result == [Window(at(0), at(5), 10)]  # only the windows before the rechain time


def test_add_late_usage_before_the_first_window_of_the_suffix_forces_a_rechain():
    windows = [Window(at(8), at(13), 20)]
    result, rechain = add_usages(windows, [Usage(at(5), 3)], FIVE_HOURS)
    assert (result, rechain) == ([], at(5))


def test_add_usages_several_in_one_batch():
    windows = [Window(at(0), at(5), 10)]
    usages = [Usage(at(1), 1), Usage(at(5), 2), Usage(at(6), 3), Usage(at(10), 4)]
    assert add_usages(windows, usages, FIVE_HOURS) == (
        [Window(at(0), at(5), 11), Window(at(5), at(10), 5), Window(at(10), at(15), 4)],
        None,
    )


def test_add_usages_keeps_earlier_additions_when_a_later_usage_forces_a_rechain():
    windows = [Window(at(0), at(5), 10), Window(at(8), at(13), 20)]
    result, rechain = add_usages(windows, [Usage(at(1), 1), Usage(at(6), 3), Usage(at(9), 5)], FIVE_HOURS)
    assert rechain == at(6)
    assert result == [Window(at(0), at(5), 11)]


# --- add_usages: the projection's incremental maintenance equals the chain from scratch -------

MINUTE = timedelta(minutes=1)
THREE_WEEKS_MIN = 3 * 7 * 24 * 60


@st.composite
def usage_histories(draw):
    """Distinct events (id, time, flows), many close together and many exactly on boundaries."""
    n = draw(st.integers(min_value=1, max_value=40))
    offsets: list[int] = []  # minutes after T0
    for _ in range(n):
        choice = draw(st.integers(0, 5)) if offsets else 0
        if choice == 0:
            minute = draw(st.integers(0, THREE_WEEKS_MIN))
        elif choice == 1:  # close to an earlier usage
            minute = draw(st.sampled_from(offsets)) + draw(st.integers(-180, 180))
        elif choice == 2:  # the same time as an earlier usage
            minute = draw(st.sampled_from(offsets))
        elif choice == 3:  # exactly k * 5 h after (or before) an earlier usage: a window end
            minute = draw(st.sampled_from(offsets)) + 300 * draw(st.integers(-4, 4))
        elif choice == 4:  # exactly k weeks after an earlier usage
            minute = draw(st.sampled_from(offsets)) + 7 * 24 * 60 * draw(st.integers(-2, 2))
        else:  # an exact multiple of 5 h from T0
            minute = 300 * draw(st.integers(0, THREE_WEEKS_MIN // 300))
        offsets.append(min(max(minute, 0), THREE_WEEKS_MIN))
    flows = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n))
    return [(f"e{i}", T0 + m * MINUTE, f) for i, (m, f) in enumerate(zip(offsets, flows, strict=True))]


@st.composite
def deliveries(draw):
    """A history, delivered in a random order with random re-deliveries, in random batches."""
    events = draw(usage_histories())
    stream = list(events)
    duplicates = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    stream += duplicates
    stream = draw(st.permutations(stream))
    batches = []
    i = 0
    while i < len(stream):
        size = draw(st.integers(1, max(1, min(8, len(stream) - i))))
        batches.append(stream[i : i + size])
        i += size
    return events, batches


def project(batches, duration: timedelta) -> list[Window]:
    """What services/quota/projection.py does per batch, with lists for tables."""
    seen: set[str] = set()
    history: list[Usage] = []
    stored: list[Window] = []
    for batch in batches:
        fresh = []
        for event_id, when, flows in batch:
            if event_id not in seen:  # dedupe by event id, also inside one batch
                seen.add(event_id)
                fresh.append((when, event_id, flows))
        if not fresh:
            continue
        fresh.sort()
        usages = [Usage(when, flows) for when, _, flows in fresh]
        history += usages
        earliest = usages[0].at
        suffix = [w for w in stored if w.end > earliest]
        kept = [w for w in stored if w.end <= earliest]
        windows, rechain_from = add_usages(suffix, usages, duration)
        if rechain_from is not None:
            assert all(w.start < rechain_from for w in windows)
            kept = [w for w in kept if w.start < rechain_from]
            windows = windows + chain(sorted(u for u in history if u.at >= rechain_from), duration)
        stored = kept + windows
        # after every batch the stored chain is the chain of everything seen so far
        assert stored == chain(sorted(history), duration)
    return stored


@pytest.mark.parametrize("duration", [FIVE_HOURS, ONE_WEEK], ids=["5h", "week"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=deliveries())
def test_incremental_windows_equal_the_chain_from_scratch(duration, data):
    events, batches = data
    result = project(batches, duration)
    expected = chain(sorted(Usage(when, flows) for _, when, flows in events), duration)
    assert result == expected
    assert sum(w.flows for w in result) == sum(f for _, _, f in events)
    for earlier, later in itertools.pairwise(result):
        assert earlier.end <= later.start
        assert earlier.end - earlier.start == duration


def test_chain_late_usage_in_a_gap_shifts_the_later_windows():
    """Why add_usages must ask for a rechain: the late usage at 6 h opens [6 h, 11 h), which
    swallows the usage at 8 h that used to open its own window."""
    before = chain([Usage(at(0), 10), Usage(at(8), 20)], FIVE_HOURS)
    after = chain([Usage(at(0), 10), Usage(at(6), 3), Usage(at(8), 20)], FIVE_HOURS)
    assert before == [Window(at(0), at(5), 10), Window(at(8), at(13), 20)]
    assert after == [Window(at(0), at(5), 10), Window(at(6), at(11), 23)]


def add_usages_as_it_was(
    windows: list[Window], usages: list[Usage], duration: timedelta
) -> tuple[list[Window], datetime | None]:
    """add_usages before it kept the windows as three lists (the reference for the property below)."""
    result = list(windows)
    starts = [w.start for w in result]
    for when, flows in usages:
        i = bisect.bisect_right(starts, when) - 1
        if i >= 0 and when < result[i].end:
            result[i] = result[i]._replace(flows=result[i].flows + flows)
        elif i == len(result) - 1:
            result.append(Window(when, when + duration, flows))
            starts.append(when)
        else:
            return [w for w in result if w.start < when], when
    return result, None


@pytest.mark.parametrize("duration", [FIVE_HOURS, ONE_WEEK], ids=["5h", "week"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_add_usages_equals_add_usages_as_it_was(duration, data):
    """Any suffix (a chain, or windows of any spacing and flows, as a late batch may load) and any
    sorted usages, flows of zero included: the same windows and the same rechain point."""
    history = sorted(data.draw(usage_histories()), key=lambda e: e[1])
    suffix = chain([Usage(when, flows) for _, when, flows in history], duration)
    suffix = suffix[data.draw(st.integers(0, len(suffix))) :]
    offsets = st.integers(-2 * 24 * 60, 4 * 7 * 24 * 60)
    usages = sorted(
        Usage(T0 + m * timedelta(minutes=1), f)
        for m, f in data.draw(st.lists(st.tuples(offsets, st.integers(0, 10**9)), max_size=30))
    )
    assert add_usages(suffix, usages, duration) == add_usages_as_it_was(suffix, usages, duration)
