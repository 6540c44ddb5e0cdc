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

Rebuild. Reservations and the RPM state live in memory only, in the instance that owns the
account's partition (services/quota/partitions.py). Every quota instance hears every heartbeat; the
partition's runner-up (and an instance taking the partition over) holds (at the gateway's
estimate) each listed call of an account whose partition it does not answer for, and keeps the
latest RPM state a gateway saw for such an account: a standby's copy,
let go by the same barrier as the owner's once the gateways stop listing the call. When the instance
takes a partition over (its owner died, or left), it waits for the heartbeats that list what the old
owner admitted last, and for its projection to apply what was stored before, and only then admits:
so a call the old owner admitted is, after the take-over, either still listed by its gateway (held)
or finished with its usage in the log (counted). A burst during the take-over gets 503s with
retry-after, then no more than the caps allow. After a restart of the only instance the same
happens for every partition, listening two intervals first. What the heartbeats do not carry is
lost: the RPM slots and reservations of quota.check callers other than gateways (tools, the bench).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from fractions import Fraction

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.clock import Clock
from libs.eventlog.barrier import applied_by_partition, latest_stored
from libs.pricing.money import round_half_up
from libs.settings_views import QuotaSettings
from proto.v1 import GatewayHeartbeat, InflightCall, subjects
from services.quota.reservations import Reservations
from services.quota.state import QuotaState

log = logging.getLogger(__name__)

SWEEP_SLICE = 256
"""Reservations a sweep handles between two turns of the loop (about 0.25 ms of CPU): at 5,000
checks/s, releasing the 5,000 past their barrier in one go held quota's loop 5.7 ms."""


class InflightTracker:
    def __init__(
        self, state: QuotaState, settings: QuotaSettings, clock: Clock, nc: Client, pool: asyncpg.Pool, schema: str
    ) -> None:
        self._state, self._settings, self._clock = state, settings, clock
        self._nc, self._pool, self._schema = nc, pool, schema
        self._interval = timedelta(seconds=settings.heartbeat_interval_s)
        self._decode = msgspec.json.Decoder(GatewayHeartbeat)
        self.ready_for: Callable[[str], bool] = lambda _account_id: False
        """Whether this instance owns and answers for the account's partition (partitions.py): its
        quota.check holds that account's calls, and its heartbeats only renew them. Until then
        (standby, or taking over) the heartbeats hold them."""
        self.copying: Callable[[str], bool] = lambda _account_id: True
        """Whether to hold the account's calls as a standby (partitions.py: this instance is its
        partition's runner-up, or takes it over); where it answers, ready_for decides."""
        self.listening_since = 0.0
        """Monotonic time from which the heartbeats are heard."""
        self._released_before: set[str] = set()

    async def listen(self) -> None:
        """Hear the gateways' heartbeats from now on (call first thing at start)."""
        self._state.released_while_rebuilding = set()
        self.listening_since = time.monotonic()
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
        released = self._state.released_while_rebuilding or set()
        for call in beat.calls:
            held = self._kind(call)
            if held.renew(call.account_id, call.reservation_id, now) or self.ready_for(call.account_id):
                continue  # where quota answers, every call it admitted is held from its quota.check
            if not self.copying(call.account_id):
                continue
            if call.reservation_id not in released and call.reservation_id not in self._released_before:
                held.hold(call.account_id, call.reservation_id, self._amount(call, now), now)
        for account_id, tat in beat.rate_tats.items():
            if self.ready_for(account_id) or not self.copying(account_id):
                continue
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

    async def _applied(self) -> dict[int, int]:
        """The last sequence quota's projection applied, per partition."""
        return await applied_by_partition(self._pool, self._schema, "quota")

    # -- letting go -----------------------------------------------------------------------

    async def run(self) -> None:
        """Every half interval let go of what no heartbeat renews any more."""
        forget_every = max(2, 2 * (self._settings.heartbeat_misses + 1))
        rounds = 0
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s / 2)
            rounds += 1
            if rounds % forget_every == 0:  # usage applied that long ago: no heartbeat lists its call any more
                self._released_before = self._state.released_while_rebuilding or set()
                self._state.released_while_rebuilding = set()
            try:
                await self.sweep()
            except (OSError, TimeoutError, asyncpg.PostgresError, nats.errors.Error) as exc:
                log.warning("reservations not swept this time: %r", exc)

    async def sweep(self) -> None:
        """Let every reservation no heartbeat renews wait for its barrier, and release those whose
        barrier the projection reached: SWEEP_SLICE at most between two turns of the loop, so that the
        checks queued meanwhile are answered (each one rechecked after a turn: renewed or released
        meanwhile, it is left alone)."""
        since = self._clock.now() - self._interval * self._settings.heartbeat_misses
        barriers: dict[str, tuple[int, int] | None] = {}
        unawaited = 0
        for held in (self._state.reservations, self._state.payg_reservations):
            for account_id, reservation_id in held.unrenewed(since):
                if account_id not in barriers:
                    barriers[account_id] = await self._latest_event(account_id)
                    unawaited = 0
                else:
                    unawaited += 1
                    if unawaited >= SWEEP_SLICE:
                        await asyncio.sleep(0)
                        unawaited = 0
                barrier = barriers[account_id]
                if barrier is None:  # nothing stored for the account: no usage to wait for
                    held.release(account_id, reservation_id, unrenewed_since=since)
                else:
                    held.wait_for(account_id, reservation_id, *barrier, unrenewed_since=since)
        if self._state.reservations.waiting() or self._state.payg_reservations.waiting():
            applied = await self._applied()
            for held in (self._state.reservations, self._state.payg_reservations):
                waiting = held.waiting_now()
                for start in range(0, len(waiting), SWEEP_SLICE):
                    held.past_barriers(applied, among=waiting[start : start + SWEEP_SLICE])
                    await asyncio.sleep(0)

    async def _latest_event(self, account_id: str) -> tuple[int, int] | None:
        """(partition, sequence) of the account's latest event stored now, or None."""
        return await latest_stored(self._nc.jetstream(), self._settings.stream, account_id)
