"""How one account's windows and monthly totals are held in memory: as an int and a flat tuple, not
as objects (quota holds a million accounts at scale; issue 14 asks for at most 1 KB each).

A rolling window is (start, start + its chain's length, flows): its end follows from its start, so
memory keeps the start in microseconds since the epoch and the flows, packed into one int (some 40
bytes, where a Window tuple with two datetimes and an int took 204). A window that does not fit the
packing (its end is not start + length, or its times are not in UTC) is kept as the Window itself,
so reading back always gives what was stored.

The monthly totals are a flat tuple (start, flows, start, flows, ...): most accounts hold one or
two months, and the start is the datetime the plan's anchor already holds. `MonthTotals` gives it
the dict interface the projection and admission use (a dict of one entry took 224 bytes)."""

from collections.abc import Iterator, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar, overload

from services.quota.domain.windows import Window

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_FLOWS_BITS = 64
_FLOWS_MASK = (1 << _FLOWS_BITS) - 1
_FLOWS_SIGN = 1 << (_FLOWS_BITS - 1)

T = TypeVar("T")

PackedWindow = int | Window | None
"""A window as memory holds it: packed (int), as it came when it does not pack, or none."""


def pack_window(window: Window | None, length: timedelta) -> PackedWindow:
    """The window as one int: its start's microseconds above 64 bits of flows (two's complement,
    like the table's bigint). The Window itself when its end or time zone does not fit."""
    if window is None:
        return None
    start, end, flows = window
    if start.tzinfo is not UTC or end - start != length or not -_FLOWS_SIGN <= flows < _FLOWS_SIGN:
        return window
    return ((start - EPOCH) // MICROSECOND) << _FLOWS_BITS | (flows & _FLOWS_MASK)


def pack_micros(start_us: int, end_us: int, flows: int, length: timedelta) -> PackedWindow:
    """pack_window of the window from `start_us` to `end_us` (microseconds since the epoch, as a
    query can give them): at start, a million accounts' windows are packed without datetimes."""
    if end_us - start_us == _micros(length) and -_FLOWS_SIGN <= flows < _FLOWS_SIGN:
        return start_us << _FLOWS_BITS | (flows & _FLOWS_MASK)
    return Window(EPOCH + timedelta(0, 0, start_us), EPOCH + timedelta(0, 0, end_us), flows)


def add_flows(packed: PackedWindow, window: Window, flows: int, length: timedelta) -> PackedWindow:
    """pack_window(Window(window.start, window.end, window.flows + flows), length), where `window` is
    what `packed` unpacks to: the usual case (an int, the sum fits) without the datetimes' arithmetic."""
    if isinstance(packed, int):
        total = window.flows + flows
        if -_FLOWS_SIGN <= total < _FLOWS_SIGN:
            return (packed >> _FLOWS_BITS) << _FLOWS_BITS | (total & _FLOWS_MASK)
    return pack_window(_new_window(Window, (window.start, window.end, window.flows + flows)), length)


def unpack_window(packed: PackedWindow, length: timedelta) -> Window | None:
    if not isinstance(packed, int):
        return packed  # a Window kept as it came, or None
    flows = packed & _FLOWS_MASK
    start = EPOCH + timedelta(0, 0, packed >> _FLOWS_BITS)
    return _new_window(Window, (start, start + length, flows - (flows & _FLOWS_SIGN) * 2))


_new_window = tuple.__new__
"""Window's own constructor without the Python frame namedtuple adds (read on every quota.check)."""
_MICROS: dict[timedelta, int] = {}


def _micros(length: timedelta) -> int:
    micros = _MICROS.get(length)
    if micros is None:
        micros = _MICROS[length] = length // MICROSECOND
    return micros


class HoldsMonths(Protocol):
    months_flat: tuple[datetime | int, ...]


class MonthTotals(MutableMapping[datetime, int]):
    """Flows per monthly period by the period's start, read and written through the account's flat
    tuple (made on each access of `AccountQuota.months`: holds nothing itself)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: HoldsMonths) -> None:
        self._owner = owner

    @overload
    def get(self, start: datetime, /) -> int | None: ...
    @overload
    def get(self, start: datetime, default: int | T, /) -> int | T: ...
    def get(self, start: datetime, default: object = None, /) -> object:
        flat = self._owner.months_flat
        for i in range(0, len(flat), 2):
            if flat[i] == start:
                return flat[i + 1]
        return default

    def __getitem__(self, start: datetime) -> int:
        flows = self.get(start)
        if flows is None:
            raise KeyError(start)
        return flows

    def __setitem__(self, start: datetime, flows: int) -> None:
        flat = self._owner.months_flat
        for i in range(0, len(flat), 2):
            if flat[i] == start:  # the key it has stays (like a dict's): often the plan's anchor itself
                self._owner.months_flat = (*flat[: i + 1], flows, *flat[i + 2 :])
                return
        self._owner.months_flat = (*flat, start, flows)

    def __delitem__(self, start: datetime) -> None:
        flat = self._owner.months_flat
        for i in range(0, len(flat), 2):
            if flat[i] == start:
                self._owner.months_flat = flat[:i] + flat[i + 2 :]
                return
        raise KeyError(start)

    def __iter__(self) -> Iterator[datetime]:
        return iter(self._owner.months_flat[::2])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._owner.months_flat) // 2

    def __repr__(self) -> str:
        return repr(dict(self.items()))


def flat_months(months: Mapping[datetime, int]) -> tuple[datetime | int, ...]:
    return tuple(value for item in months.items() for value in item)
