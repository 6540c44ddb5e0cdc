"""The gateway's calls in flight, and the heartbeat that keeps their reservations alive in quota.

Every call quota admits is registered here (account, reservation id, billing mode, the estimate
quota reserved, when it was admitted) until the gateway is done with it: its usage handed to
the recorder, or the upstream failed and the reservation was released. Every
`heartbeat_interval_s` the gateway broadcasts the whole list (GatewayHeartbeat on
quota.heartbeat; one batch per beat, split into several messages only when it is large).
Quota keeps a reservation for as long as the heartbeats list it, however long the call runs;
when they stop listing it (the call ended, or this gateway is gone) it waits only for the
account's usage to be projected (services/quota/reservations.py).

The same heartbeats let a restarted quota rebuild what it held in memory: the calls in flight
with their estimates, and, per account, the RPM state (the GCRA theoretical arrival time) quota's
latest answer showed this gateway (`now + rate_limit.reset_s`), kept while it lies ahead.
"""

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from nats.aio.client import Client

from libs.clock import Clock
from proto.v1 import GatewayHeartbeat, InflightCall, RateLimit, encode, subjects

log = logging.getLogger(__name__)

CALLS_PER_MESSAGE = 2000
"""A beat's calls per message: 2,000 calls stay far below NATS's 1 MB default payload."""


class InflightCalls:
    def __init__(self, clock: Clock, gateway_id: str | None = None) -> None:
        self.clock = clock
        self.gateway_id = gateway_id or f"gw-{uuid.uuid4().hex[:12]}"
        self._calls: dict[str, InflightCall] = {}
        self._rate_tats: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, reservation_id: object) -> bool:
        return reservation_id in self._calls

    def admitted(self, call: InflightCall) -> None:
        self._calls[call.reservation_id] = call

    def ended(self, reservation_id: str) -> None:
        """The gateway is done with the call (usage recorded, or reservation released); twice is harmless."""
        self._calls.pop(reservation_id, None)

    def rate_seen(self, account_id: str, rate: RateLimit | None, now: datetime) -> None:
        """Remember the account's RPM state as quota's answer shows it (admitted or refused)."""
        if rate is None:
            return
        tat = now + timedelta(seconds=rate.reset_s)
        if tat > self._rate_tats.get(account_id, now):
            self._rate_tats[account_id] = tat

    def heartbeats(self, now: datetime) -> list[GatewayHeartbeat]:
        """This beat's messages: every call in flight, and the RPM states still ahead of now."""
        self._rate_tats = {account: tat for account, tat in self._rate_tats.items() if tat > now}
        calls = list(self._calls.values())
        chunks = [calls[i : i + CALLS_PER_MESSAGE] for i in range(0, len(calls), CALLS_PER_MESSAGE)] or [[]]
        return [
            GatewayHeartbeat(
                gateway_id=self.gateway_id, sent_at=now, calls=chunk, rate_tats=self._rate_tats if i == 0 else {}
            )
            for i, chunk in enumerate(chunks)
        ]

    async def run(self, nc: Client, interval_s: float) -> None:
        """Beat every interval, from the start (a quota rebuilding after a restart is waiting for it)."""
        while True:
            for beat in self.heartbeats(self.clock.now()):
                try:
                    await nc.publish(subjects.QUOTA_HEARTBEAT, encode(beat))
                except Exception as exc:  # NATS away: quota holds the reservations a few beats longer
                    log.warning("heartbeat not sent: %r", exc)
            await asyncio.sleep(interval_s)
