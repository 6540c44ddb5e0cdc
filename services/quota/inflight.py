"""Calls in flight, seen from quota: renewed by the gateways' heartbeats, rebuilt from them after a
start, let go once their usage is counted.

Renewal. Every gateway lists its calls in flight every `heartbeat_interval_s`
(services/gateway/inflight.py). A listed reservation stays held however long its call runs. A
reservation no heartbeat renewed for `heartbeat_misses` intervals belongs to a call that ended
(or to a gateway that is gone). The call's usage, if it had any, was stored in the log before the
gateway let go of it, but the projection may not have counted it yet: so the reservation is not
dropped then, it waits for a barrier, the stream sequence of the account's latest event stored at
that moment, and goes once the projection has applied that far (see reservations.py). A lagging
projection therefore never lets a finished call's cost escape the caps, and a call that never
reports (its gateway was killed) frees its room as soon as the projection is current. The
barrier is taken `heartbeat_misses` intervals after the last heartbeat that listed the call, so a
usage event still on its way to the log when the call ended has those seconds to be stored.

Rebuild. Reservations and the RPM state live in memory only. After a start (a crash, a SIGKILL)
quota answers quota.check with `not_ready` until it has rebuilt them:
1. it listens to the heartbeats before anything else, and notes the head of every partition of
   the event log;
2. it listens for two heartbeat intervals, so every live gateway has listed all its calls:
   each listed call is held again with the estimate the gateway was admitted with (unless the
   projection already applied its usage meanwhile), and each account's RPM state becomes the
   latest one quota's answers had shown any gateway;
3. it waits until its projection has applied every event stored at step 1: a call that ended
   before the restart is counted by its usage, not by a reservation.
Only then does it admit, and only then does its HTTP port (/healthz) come up. So a call the old
process admitted is, after the restart, either still listed by its gateway (held again) or
finished with its usage in the log (counted): a burst during the restart gets 503s with
retry-after, then no more than the caps allow. What the heartbeats do not carry is lost: the RPM
slots and reservations of quota.check callers other than gateways (tools, the bench).
"""

import asyncio
import logging
from datetime import datetime, timedelta
from fractions import Fraction

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.clock import Clock
from libs.eventlog import subjects as log_subjects
from libs.eventlog.barrier import applied_by_partition, latest_stored
from libs.eventlog.streams import require_streams
from libs.pricing.money import round_half_up
from libs.settings import QuotaSettings
from proto.v1 import GatewayHeartbeat, InflightCall, subjects
from services.quota.reservations import Reservations
from services.quota.state import QuotaState

log = logging.getLogger(__name__)


class InflightTracker:
    def __init__(
        self, state: QuotaState, settings: QuotaSettings, clock: Clock, nc: Client, pool: asyncpg.Pool, schema: str
    ) -> None:
        self._state, self._settings, self._clock = state, settings, clock
        self._nc, self._pool, self._schema = nc, pool, schema
        self._interval = timedelta(seconds=settings.heartbeat_interval_s)
        self._decode = msgspec.json.Decoder(GatewayHeartbeat)
        self.ready = asyncio.Event()
        """Set once the rebuild after the start is done: quota.check admits only then."""

    async def listen(self) -> None:
        """Hear the gateways' heartbeats from now on (call first thing at start)."""
        self._state.released_while_rebuilding = set()
        await self._nc.subscribe(subjects.QUOTA_HEARTBEAT, cb=self.on_heartbeat)

    async def on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = self._decode.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("a heartbeat that does not decode: %s", exc)
            return
        self.heard(beat)

    def heard(self, beat: GatewayHeartbeat) -> None:
        now = self._clock.now()
        rebuilding = not self.ready.is_set()
        released = self._state.released_while_rebuilding or set()
        for call in beat.calls:
            held = self._kind(call)
            if held.renew(call.account_id, call.reservation_id, now) or not rebuilding:
                continue  # after the rebuild every call quota admitted is held from its quota.check
            if call.reservation_id not in released:
                held.hold(call.account_id, call.reservation_id, self._amount(call, now), now)
        if rebuilding:
            for account_id, tat in beat.rate_tats.items():
                known = self._state.rate_limits.get(account_id)
                if tat > now and (known is None or tat > known):
                    self._state.rate_limits[account_id] = tat

    def _kind(self, call: InflightCall) -> Reservations:
        return self._state.payg_reservations if call.billing_mode == "payg" else self._state.reservations

    def _amount(self, call: InflightCall, now: datetime) -> int:
        """What quota.check reserved for it: the USD estimate itself, or in Flows at today's rate."""
        if call.billing_mode == "payg":
            return call.estimated_usd_micros
        account = self._state.accounts.get(call.account_id)
        multiplier = self._state.multiplier(account, now) if account is not None else Fraction(1)
        return round_half_up(Fraction(call.estimated_usd_micros) / (self._state.flow_rate.at(now) * multiplier))

    # -- the rebuild ----------------------------------------------------------------------

    async def rebuild(self) -> None:
        heads = await self._heads()
        await asyncio.sleep(2 * self._settings.heartbeat_interval_s)
        while True:
            applied = await self._applied()
            if all(applied.get(partition, 0) >= seq for partition, seq in heads.items()):
                break
            await asyncio.sleep(0.05)
        self._state.released_while_rebuilding = None
        self.ready.set()
        log.info(
            "in-flight state rebuilt: %d subscription and %d PAYG reservations, %d rate limits",
            self._state.reservations.count(), self._state.payg_reservations.count(), len(self._state.rate_limits),
        )  # fmt: skip

    async def _heads(self) -> dict[int, int]:
        """The last sequence stored in each partition of the log now."""
        js = self._nc.jetstream()
        heads: dict[int, int] = {}
        for partition in range(await require_streams(js, self._settings)):
            try:
                last = await js.get_last_msg(self._settings.stream, log_subjects.partition_filter(partition))
            except nats.js.errors.NotFoundError:
                continue
            heads[partition] = int(last.seq or 0)
        return heads

    async def _applied(self) -> dict[int, int]:
        """The last sequence quota's projection applied, per partition."""
        return await applied_by_partition(self._pool, self._schema, "quota")

    # -- letting go -----------------------------------------------------------------------

    async def run(self) -> None:
        """Rebuild, then every half interval let go of what no heartbeat renews any more."""
        await self.rebuild()
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s / 2)
            try:
                await self.sweep()
            except (OSError, TimeoutError, asyncpg.PostgresError, nats.errors.Error) as exc:
                log.warning("reservations not swept this time: %r", exc)

    async def sweep(self) -> None:
        since = self._clock.now() - self._interval * self._settings.heartbeat_misses
        barriers: dict[str, tuple[int, int] | None] = {}
        for held in (self._state.reservations, self._state.payg_reservations):
            for account_id, reservation_id in held.unrenewed(since):
                if account_id not in barriers:
                    barriers[account_id] = await self._latest_event(account_id)
                barrier = barriers[account_id]
                if barrier is None:  # nothing stored for the account: no usage to wait for
                    held.release(account_id, reservation_id)
                else:
                    held.wait_for(account_id, reservation_id, *barrier, unrenewed_since=since)
        if self._state.reservations.waiting() or self._state.payg_reservations.waiting():
            applied = await self._applied()
            self._state.reservations.past_barriers(applied)
            self._state.payg_reservations.past_barriers(applied)

    async def _latest_event(self, account_id: str) -> tuple[int, int] | None:
        """(partition, sequence) of the account's latest event stored now, or None."""
        return await latest_stored(self._nc.jetstream(), self._settings.stream, account_id)
