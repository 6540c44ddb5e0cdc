"""In-flight calls' reservations, in memory: held at admission, released by the call's
usage event or by a timeout. Lost on restart by design: a restarted quota service has
no calls in flight that it admitted, and their usage still arrives through the log."""

from datetime import datetime, timedelta


class Reservations:
    def __init__(self, timeout: timedelta) -> None:
        self._timeout = timeout
        self._held: dict[str, dict[str, tuple[int, datetime]]] = {}

    def hold(self, account_id: str, reservation_id: str, flows: int, now: datetime) -> None:
        self._held.setdefault(account_id, {})[reservation_id] = (flows, now + self._timeout)

    def release(self, account_id: str, reservation_id: str) -> None:
        held = self._held.get(account_id)
        if held is not None:
            held.pop(reservation_id, None)
            if not held:
                del self._held[account_id]

    def total(self, account_id: str, now: datetime) -> int:
        held = self._held.get(account_id)
        if not held:
            return 0
        expired = [rid for rid, (_, expires) in held.items() if expires <= now]
        for rid in expired:
            del held[rid]
        return sum(flows for flows, _ in held.values())
