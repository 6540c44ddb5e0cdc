"""In-flight calls' reservations, in memory: held at admission, as long as the call runs and
until its usage is counted.

A reservation ends in one of three ways:
- its call's usage event is applied by the projection (the usage now counts instead);
- the gateway releases it (the call ended without usage: the upstream failed);
- its call is no longer renewed (see services/quota/inflight.py): the gateway finished it, or
  the gateway is gone. Its usage, if any, was stored before the call ended, so the reservation
  then waits for a *barrier*: the stream sequence of the account's latest event stored when the
  renewals stopped. Once the projection has applied its partition through that sequence, the
  usage (if there was any) counts and the reservation goes, however far the projection lags.

There is no fixed timeout: a 10-minute stream holds its reservation for 10 minutes.

Each account keeps its running total, so the total asked for on every quota.check is O(1). The
sweep over calls no longer renewed (once a second) visits only those, not every reservation held:
the others are kept in the order they were last held or renewed, and it reads them from the oldest
until the first one renewed since (a clock stepped back can delay finding one, never hasten it);
those waiting for a barrier are kept apart. At 5,000 checks/s with tens of thousands of calls in
flight a sweep over all of them stalled the event loop 25-33 ms a second (docs/performance.md); the
sweep also releases those past their barrier a slice at a time (`past_barriers(among=)`), since the
5,000 of a second released in one go held the loop 5.7 ms."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class _Held:
    amount: int
    renewed_at: datetime
    barrier: tuple[int, int] | None = None
    """(partition, stream sequence) the projection must reach before the reservation goes."""


@dataclass
class _Account:
    by_id: dict[str, _Held] = field(default_factory=dict)
    total: int = 0


class Reservations:
    """One kind of reservation (micro-Flows of the subscription, or micro-USD of the balance)."""

    def __init__(self) -> None:
        self._held: dict[str, _Account] = {}
        self._by_renewal: dict[tuple[str, str], _Held] = {}
        """Those not waiting for a barrier, in the order they were last held or renewed."""
        self._waiting: dict[tuple[str, str], _Held] = {}
        """Those waiting for a barrier."""

    def hold(self, account_id: str, reservation_id: str, amount: int, now: datetime) -> None:
        held = self._held.setdefault(account_id, _Account())
        previous = held.by_id.get(reservation_id)
        if previous is not None:
            held.total -= previous.amount
        key = (account_id, reservation_id)
        self._unindex(key)
        held.by_id[reservation_id] = self._by_renewal[key] = _Held(amount, now)
        held.total += amount

    def renew(self, account_id: str, reservation_id: str, now: datetime) -> bool:
        """The call is still running: keep it (even if it was waiting for a barrier). False if unknown."""
        held = self._held.get(account_id)
        reservation = held.by_id.get(reservation_id) if held else None
        if reservation is None:
            return False
        key = (account_id, reservation_id)
        self._unindex(key)
        reservation.renewed_at, reservation.barrier = now, None
        self._by_renewal[key] = reservation  # the newest
        return True

    def release(self, account_id: str, reservation_id: str, *, unrenewed_since: datetime | None = None) -> bool:
        """False if unknown, or (given `unrenewed_since`) renewed since: its call runs after all."""
        held = self._held.get(account_id)
        if held is None:
            return False
        if unrenewed_since is not None:
            reservation = held.by_id.get(reservation_id)
            if reservation is not None and reservation.renewed_at >= unrenewed_since:
                return False
        released = held.by_id.pop(reservation_id, None)
        if released is not None:
            held.total -= released.amount
            self._unindex((account_id, reservation_id))
        if not held.by_id:
            del self._held[account_id]
        return released is not None

    def _unindex(self, key: tuple[str, str]) -> None:
        """Out of the sweep's two indexes (it is in one at most)."""
        self._by_renewal.pop(key, None)
        self._waiting.pop(key, None)

    def holds(self, account_id: str, reservation_id: str) -> bool:
        held = self._held.get(account_id)
        return held is not None and reservation_id in held.by_id

    def count(self) -> int:
        return sum(len(held.by_id) for held in self._held.values())

    def total(self, account_id: str) -> int:
        held = self._held.get(account_id)
        return held.total if held else 0

    def held(self, account_id: str) -> list[str]:
        """The account's reservations: calls admitted whose usage is not counted yet."""
        held = self._held.get(account_id)
        return list(held.by_id) if held else []

    def unrenewed(self, since: datetime) -> list[tuple[str, str]]:
        """(account, reservation) not renewed since `since` and not yet waiting for a barrier: the
        oldest, up to the first renewed since."""
        found = []
        for key, reservation in self._by_renewal.items():
            if reservation.renewed_at >= since:
                break
            found.append(key)
        return found

    def wait_for(
        self, account_id: str, reservation_id: str, partition: int, seq: int, *, unrenewed_since: datetime
    ) -> None:
        """From now on the reservation waits only for the projection to reach (partition, seq), unless
        it was renewed after `unrenewed_since` (its call runs after all)."""
        key = (account_id, reservation_id)
        reservation = self._by_renewal.get(key) or self._waiting.get(key)  # a later barrier replaces one
        if reservation is not None and reservation.renewed_at < unrenewed_since:
            reservation.barrier = (partition, seq)
            self._waiting[key] = self._by_renewal.pop(key, reservation)

    def waiting(self) -> bool:
        return bool(self._waiting)

    def waiting_now(self) -> list[tuple[str, str]]:
        """(account, reservation) of those waiting for a barrier now, in the order they began to wait."""
        return list(self._waiting)

    def past_barriers(
        self, applied: dict[int, int], among: Iterable[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        """Release those (of `among`, or every one) waiting for a barrier the projection has reached
        (`applied`: partition -> last sequence applied); return them. One of `among` renewed or
        released since is left alone."""
        waiting = self._waiting
        passed = []
        for key in waiting if among is None else among:
            reservation = waiting.get(key)
            if (
                reservation is not None
                and reservation.barrier is not None
                and applied.get(reservation.barrier[0], 0) >= reservation.barrier[1]
            ):
                passed.append(key)
        for account_id, reservation_id in passed:
            self.release(account_id, reservation_id)
        return passed
