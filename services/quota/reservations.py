"""In-flight calls' reservations, in memory: held at admission, released by the call's
usage event or by a timeout. Lost on restart by design: a restarted quota service has
no calls in flight that it admitted, and their usage still arrives through the log.

Each account keeps its running total and its earliest expiry, so that the total asked
for on every quota.check costs O(1) unless a reservation has just expired."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass
class _Held:
    by_id: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    total: int = 0
    earliest: datetime | None = None


class Reservations:
    def __init__(self, timeout: timedelta) -> None:
        self._timeout = timeout
        self._held: dict[str, _Held] = {}

    def hold(self, account_id: str, reservation_id: str, flows: int, now: datetime) -> None:
        held = self._held.setdefault(account_id, _Held())
        expires = now + self._timeout
        previous = held.by_id.get(reservation_id)
        if previous is not None:
            held.total -= previous[0]
        held.by_id[reservation_id] = (flows, expires)
        held.total += flows
        if held.earliest is None or expires < held.earliest:
            held.earliest = expires

    def release(self, account_id: str, reservation_id: str) -> None:
        held = self._held.get(account_id)
        if held is None:
            return
        released = held.by_id.pop(reservation_id, None)
        if released is not None:
            held.total -= released[0]
        if not held.by_id:
            del self._held[account_id]

    def total(self, account_id: str, now: datetime) -> int:
        held = self._held.get(account_id)
        if held is None:
            return 0
        if held.earliest is not None and held.earliest <= now:
            held.by_id = {rid: (f, e) for rid, (f, e) in held.by_id.items() if e > now}
            held.total = sum(f for f, _ in held.by_id.values())
            held.earliest = min((e for _, e in held.by_id.values()), default=None)
        return held.total

    def held(self, account_id: str, now: datetime) -> list[str]:
        """The account's reservations still held: calls admitted and not yet reported or timed out."""
        self.total(account_id, now)  # drops the expired ones
        held = self._held.get(account_id)
        return list(held.by_id) if held else []
