"""quota's compact memory per account (services/quota/domain/compact.py): what is read back is exactly
what was written, as with the Window objects and the dict it replaced, whatever the values."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.quota.domain.admission import AccountQuota, Limits, decide
from services.quota.domain.compact import EPOCH, MICROSECOND, add_flows, pack_micros, pack_window, unpack_window
from services.quota.domain.periods import Segment
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK, Window

BIGINT = 2**63
LENGTHS = [FIVE_HOURS, ONE_WEEK]

utc_times = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC))
other_zones = st.sampled_from([timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])
any_times = st.one_of(
    utc_times,
    st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=other_zones),
    st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1)),  # naive: kept as it came
)
flows = st.one_of(st.integers(-BIGINT, BIGINT - 1), st.integers(-(2**80), 2**80), st.sampled_from([0, -1, 1]))


@st.composite
def windows(draw: st.DrawFn, length: timedelta) -> Window:
    start = draw(any_times)
    end = start + length if draw(st.booleans()) else start + draw(st.timedeltas(timedelta(0), timedelta(days=9)))
    return Window(start, end, draw(flows))


def same(a: Window | None, b: Window | None) -> bool:
    """Equal, and the same time zone too (what the replies show): not only the same instants."""
    if a is None or b is None:
        return a is b
    return a == b and a.start.tzinfo is b.start.tzinfo and a.end.tzinfo is b.end.tzinfo


@pytest.mark.parametrize("length", LENGTHS, ids=["5h", "week"])
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_a_window_reads_back_exactly_as_written(length: timedelta, data: st.DataObject) -> None:
    window = data.draw(windows(length))
    assert same(unpack_window(pack_window(window, length), length), window)
    account = AccountQuota(EPOCH, [Segment(EPOCH, "free", EPOCH, "e0")])
    if length == FIVE_HOURS:
        account.window_5h = window
        assert same(account.window_5h, window) and account.weekly is None
    else:
        account.weekly = window
        assert same(account.weekly, window) and account.window_5h is None


def test_a_window_in_utc_and_of_its_length_is_packed_into_one_int() -> None:
    """The point of it all: no Window, no datetimes held (the fallback would pass the test above)."""
    start = datetime(2026, 11, 30, 13, 0, 0, 123_456, tzinfo=UTC)
    assert isinstance(pack_window(Window(start, start + FIVE_HOURS, 7), FIVE_HOURS), int)
    assert isinstance(pack_window(Window(start, start + FIVE_HOURS, 7), ONE_WEEK), Window)


@pytest.mark.parametrize("length", LENGTHS, ids=["5h", "week"])
@settings(max_examples=500, deadline=None)
@given(start=utc_times, end_offset=st.one_of(st.just(None), st.timedeltas(timedelta(0), timedelta(days=9))), f=flows)
def test_windows_loaded_as_microseconds_equal_the_windows_as_datetimes(
    length: timedelta, start: datetime, end_offset: timedelta | None, f: int
) -> None:
    """state.load reads a window's times as microseconds since the epoch (no datetimes made): it holds
    the same as the projection holds after writing that window."""
    end = start + (length if end_offset is None else end_offset)
    loaded = pack_micros((start - EPOCH) // MICROSECOND, (end - EPOCH) // MICROSECOND, f, length)
    assert same(unpack_window(loaded, length), Window(start, end, f))
    assert loaded == pack_window(Window(start, end, f), length)


month_starts = st.sampled_from([datetime(2025, m, d, tzinfo=UTC) for m in (4, 5, 6) for d in (1, 15)])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), month_starts, st.integers(-(2**70), 2**70)),
        st.tuples(st.just("add"), month_starts, st.integers(0, 10**9)),
        st.tuples(st.just("delete"), month_starts, st.just(0)),
        st.tuples(st.just("keep_before"), month_starts, st.just(0)),
        st.tuples(st.just("copy"), month_starts, st.just(0)),
        st.tuples(st.just("window"), utc_times, flows),
        st.tuples(st.just("plan"), month_starts, st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(ops=operations)
def test_an_account_behaves_as_the_dict_and_windows_it_replaced(ops: list[tuple[str, datetime, int]]) -> None:
    """The projection's ways of changing an account (windows_tables.py, projection.py), applied to the
    compact account and to a model made of the plain dict, Windows and list: they read the same, a copy
    changes independently of its original, and admission decides the same."""
    t0 = datetime(2025, 4, 1, tzinfo=UTC)
    account = AccountQuota(t0, [Segment(t0, "pro", t0, "e0")])
    model_months: dict[datetime, int] = {}
    model_w5: Window | None = None
    model_segments = [Segment(t0, "pro", t0, "e0")]
    originals: list[tuple[AccountQuota, dict[datetime, int], Window | None, list[Segment]]] = []
    for op, when, value in ops:
        if op == "set":
            account.months[when] = value
            model_months[when] = value
        elif op == "add":  # as windows_tables.count adds a batch's flows
            account.months[when] = account.months.get(when, 0) + value
            model_months[when] = model_months.get(when, 0) + value
        elif op == "delete":
            if when in model_months:
                del account.months[when], model_months[when]
            else:
                with pytest.raises(KeyError):
                    del account.months[when]
        elif op == "keep_before":  # as windows_tables.recount_months drops the periods it counts again
            account.months = {s: f for s, f in account.months.items() if s < when}
            model_months = {s: f for s, f in model_months.items() if s < when}
        elif op == "copy":
            originals.append((account, dict(model_months), model_w5, list(model_segments)))
            account = account.copy()
        elif op == "window":
            account.window_5h = model_w5 = Window(when, when + FIVE_HOURS, value)
        elif op == "plan":  # as projection.py adds a plan change
            segment = Segment(when, "free", when, f"e{len(model_segments)}")
            account.segments = sorted([*account.segments, segment])
            model_segments = sorted([*model_segments, segment])
        assert account.months == model_months and dict(account.months) == model_months
        assert list(account.months.items()) == list(model_months.items())  # the dict's order too
        assert len(account.months) == len(model_months)
        assert all(account.months[s] == f for s, f in model_months.items())
        assert account.months.get(datetime(2024, 1, 1, tzinfo=UTC)) is None
        assert same(account.window_5h, model_w5) and list(account.segments) == model_segments
    for original, months, w5, segments in originals:
        assert original.months == months and same(original.window_5h, w5) and list(original.segments) == segments
    limits = {"pro": Limits(10**9, 10**10, 10**11), "free": Limits(10**6, 10**7, 10**8)}
    model = AccountQuota(t0, model_segments, window_5h=model_w5, months=model_months)
    for now in (t0, t0 + timedelta(days=20), t0 + timedelta(days=45), t0 + timedelta(days=75)):
        assert decide(account, limits, 0, now) == decide(model, limits, 0, now)


@pytest.mark.parametrize("length", LENGTHS, ids=["5h", "week"])
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_flows_added_to_a_packed_window_equal_the_window_packed_with_them(
    length: timedelta, data: st.DataObject
) -> None:
    """add_flows, the projection's usual path (no datetimes), packs what pack_window packs, for every
    window: packed or kept as it came, and sums that leave or cross the bigint's range."""
    window, added = data.draw(windows(length)), data.draw(flows)
    packed = pack_window(window, length)
    expected = pack_window(Window(window.start, window.end, window.flows + added), length)
    grown = add_flows(packed, window, added, length)
    assert grown == expected and type(grown) is type(expected)
    assert same(unpack_window(grown, length), Window(window.start, window.end, window.flows + added))
