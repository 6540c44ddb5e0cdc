"""quota's request/reply subjects, answered from memory (usage events from Postgres).

Each account's memory lives in the instance that owns its partition (services/quota/partitions.py):
it answers `<subject>.p.<partition>` (the gateway's quota.check and quota.release go there
directly). The plain subjects are answered by any instance, in a queue group: by itself when it owns
the account's partition, else by passing the request on to the owner. Until an owner has rebuilt
the partition's in-flight state (services/quota/inflight.py), or while nobody owns it (a
fail-over), quota.check answers `not_ready` and quota.inflight waits: neither may answer from half
the picture."""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.trace import Tracer

from libs import tracing
from libs.clock import Clock
from libs.eventlog.subjects import partitioned
from libs.pricing.catalog import FREE, Catalog
from libs.pricing.money import fraction_text
from proto.v1 import (
    Inflight,
    InflightRequest,
    QuotaCheck,
    QuotaCheckBatch,
    QuotaDecision,
    QuotaDecisions,
    QuotaStatus,
    QuotaStatusRequest,
    RateLimit,
    ReleaseReservation,
    UsageEventsReply,
    UsageEventsRequest,
    UsageRecorded,
    WindowStatus,
    encode,
)
from proto.v1.subjects import QUOTA_CHECK, QUOTA_INFLIGHT, QUOTA_RELEASE, QUOTA_STATUS
from services.quota import metrics
from services.quota.domain.admission import (
    AccountQuota,
    Limits,
    QuotaView,
    WindowView,
    admit,
    estimate,
    flows_remaining,
    view,
)
from services.quota.domain.periods import Segment
from services.quota.state import QuotaState

log = logging.getLogger(__name__)
FORWARD_TIMEOUT_S = 2.0
NOT_READY = QuotaDecision(admitted=False, billing_mode=None, reason="not_ready", retry_after_s=1)


def _window(w: WindowView) -> WindowStatus:
    return WindowStatus(
        used_flows_micros=w.used,
        limit_flows_micros=w.limit,
        reserved_flows_micros=w.reserved,
        started_at=w.started_at,
        resets_at=w.resets_at,
    )


class QuotaResponder:
    def __init__(
        self,
        state: QuotaState,
        catalog: Catalog,
        limits: Mapping[str, Limits],
        clock: Clock,
        pool: asyncpg.Pool,
        schema: str,
        nc: Client,
        ready_for: Callable[[str], bool],
        partition_of: Callable[[str], int],
        applied: Mapping[int, int] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._state = state
        self._ready_for, self._partition_of, self._nc = ready_for, partition_of, nc
        self._applied = applied if applied is not None else {}
        """The projection runner's last applied sequence per partition (ProjectionRunner.applied)."""
        self._catalog = catalog
        self._limits = limits
        self._clock = clock
        self._pool = pool
        self._schema = schema
        self._tracer = tracer
        """Spans for a batch's traced checks (a check that came alone is traced by tracing.answering)."""
        self._check = msgspec.json.Decoder(QuotaCheck)
        self._batch = msgspec.json.Decoder(QuotaCheckBatch)
        self._release = msgspec.json.Decoder(ReleaseReservation)
        self._status_request = msgspec.json.Decoder(QuotaStatusRequest)
        self._inflight_request = msgspec.json.Decoder(InflightRequest)
        self._status_reply = msgspec.json.Decoder(QuotaStatus)
        self._inflight_reply = msgspec.json.Decoder(Inflight)

    # -- the plain subjects: any instance, passed on to the owner ------------------------------

    async def on_check(self, msg: Msg) -> None:
        """quota.check: answered here if the account's partition is, else by its owner."""
        check = self._check.decode(msg.data)
        if self._ready_for(check.account_id):
            await self.on_owned_check(msg)
            return
        try:
            reply = await self._nc.request(
                partitioned(QUOTA_CHECK, self._partition_of(check.account_id)), msg.data, timeout=FORWARD_TIMEOUT_S
            )
            await msg.respond(reply.data)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):  # nobody owns it right now
            await msg.respond(encode(NOT_READY))

    async def on_release(self, msg: Msg) -> None:
        release = self._release.decode(msg.data)
        if self._ready_for(release.account_id):
            await self.on_owned_release(msg)
        else:
            await self._nc.publish(partitioned(QUOTA_RELEASE, self._partition_of(release.account_id)), msg.data)

    async def status_of(self, request: QuotaStatusRequest) -> QuotaStatus:
        if self._ready_for(request.account_id):
            return self.status(request.account_id)
        subject = partitioned(QUOTA_STATUS, self._partition_of(request.account_id))
        try:
            reply = await self._nc.request(subject, encode(request), timeout=FORWARD_TIMEOUT_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            log.info("quota.status for %s while its partition has no owner: from this instance's copy",
                     request.account_id)  # fmt: skip
            return self.status(request.account_id)
        return self._status_reply.decode(reply.data)

    async def inflight(self, request: InflightRequest) -> Inflight:
        """The account's reservations, from its partition's owner once it is ready (waits meanwhile)."""
        subject = partitioned(QUOTA_INFLIGHT, self._partition_of(request.account_id))
        while not self._ready_for(request.account_id):
            try:
                reply = await self._nc.request(subject, encode(request), timeout=FORWARD_TIMEOUT_S)
                return self._inflight_reply.decode(reply.data)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.2)
        return self.inflight_here(request.account_id)

    # -- the partition's own subjects: the owner ----------------------------------------------------

    async def on_owned_check(self, msg: Msg) -> None:
        started = time.perf_counter()
        decision = self.check(self._check.decode(msg.data))
        await msg.respond(encode(decision))
        metrics.check_seconds.record(time.perf_counter() - started)
        outcome = "admitted" if decision.admitted else decision.reason or "refused"
        metrics.checks.add(1, {"decision": outcome, "billing_mode": decision.billing_mode or ""})

    async def on_owned_check_batch(self, msg: Msg) -> None:
        """quota.check_batch: each check decided in order as if it came alone, one message of
        decisions back. A partition taken over meanwhile answers not_ready to each (check())."""
        started = time.perf_counter()
        batch = self._batch.decode(msg.data)
        if self._tracer is None or not batch.traceparents:  # no context manager per check (about 1.5 µs)
            decisions = [self.check(request) for request in batch.checks]
        else:
            decisions = []
            for request, traceparent in zip(batch.checks, batch.traceparents, strict=True):
                with tracing.serving(self._tracer, QUOTA_CHECK, traceparent):
                    decisions.append(self.check(request))
        await msg.respond(encode(QuotaDecisions(decisions=decisions)))
        answered = time.perf_counter() - started  # each check's answer left with the batch's
        for decision in decisions:
            metrics.check_seconds.record(answered)
            outcome = "admitted" if decision.admitted else decision.reason or "refused"
            metrics.checks.add(1, {"decision": outcome, "billing_mode": decision.billing_mode or ""})

    def check(self, request: QuotaCheck) -> QuotaDecision:
        """Decide (domain.admit), then remember: the RPM slot taken, the reservation held."""
        if not self._ready_for(request.account_id):  # not (or no longer) the partition's ready owner
            return NOT_READY
        account = self._state.accounts.get(request.account_id)
        if account is None:
            return QuotaDecision(admitted=False, billing_mode=None, reason="unknown_account")
        now = self._clock.now()
        plan = self._catalog.plan(account.plan_at(now))
        usd_per_flow, multiplier = self._state.flow_rate.at(now), self._state.multiplier(account, now)
        cost = estimate(request.estimated_flows_micros, request.estimated_usd_micros, usd_per_flow, multiplier)
        admission = admit(
            account, plan, self._catalog.models.get(request.model), billing_mode=request.billing_mode,
            rate_tat=self._state.rate_limits.get(request.account_id),
            reserved=self._state.reservations.total(request.account_id),
            payg_reserved=self._state.payg_reservations.total(request.account_id),
            estimate_usd=cost.usd, limits_by_plan=self._limits, now=now,
        )  # fmt: skip
        if admission.rate is not None and admission.rate.allowed:
            self._state.rate_limits[request.account_id] = admission.rate.tat
        if admission.admitted and admission.billing_mode == "payg":
            self._state.payg_reservations.hold(request.account_id, request.reservation_id, cost.usd, now)
        elif admission.admitted:
            self._state.reservations.hold(request.account_id, request.reservation_id, cost.flows, now)
        window = admission.quota.window_5h if admission.quota else None
        rate = admission.rate
        return QuotaDecision(
            admitted=admission.admitted,
            billing_mode=admission.billing_mode,
            reason=admission.reason,
            plan=plan.id,
            flows_remaining_micros=flows_remaining(admission, cost.flows),
            window_resets_at=window.resets_at if window else None,
            retry_after_s=admission.retry_after_s,
            rate_limit=RateLimit(limit=plan.rpm, remaining=rate.remaining, reset_s=rate.reset_s) if rate else None,
            usd_per_flow=fraction_text(usd_per_flow),
            multiplier=fraction_text(multiplier),
        )

    async def on_owned_release(self, msg: Msg) -> None:
        """The call ended without usage: free what it reserved, subscription room or PAYG balance."""
        release = self._release.decode(msg.data)
        self._state.reservations.release(release.account_id, release.reservation_id)
        self._state.payg_reservations.release(release.account_id, release.reservation_id)

    async def on_owned_status(self, msg: Msg) -> None:
        await msg.respond(encode(self.status(self._status_request.decode(msg.data).account_id)))

    async def on_owned_inflight(self, msg: Msg) -> None:
        request = self._inflight_request.decode(msg.data)
        if self._ready_for(request.account_id):
            await msg.respond(encode(self.inflight_here(request.account_id)))
        # else no answer: the asker tries again until the partition's owner is ready

    def inflight_here(self, account_id: str) -> Inflight:
        held = self._state.reservations.held(account_id) + self._state.payg_reservations.held(account_id)
        return Inflight(reservation_ids=held)

    def status(self, account_id: str) -> QuotaStatus:
        now = self._clock.now()
        account = self._state.accounts.get(account_id)
        known = account is not None
        if account is None:
            account = AccountQuota(now, [Segment(now, FREE, now, "")])
        quota: QuotaView = view(account, self._limits, self._state.reservations.total(account_id), now)
        return QuotaStatus(
            account_id=account_id,
            known=known,
            plan=quota.plan,
            window_5h=_window(quota.window_5h),
            weekly=_window(quota.weekly),
            monthly=_window(quota.monthly),
            extra_usage=account.extra_usage,
            payg_key_id=account.payg_key_id,
            balance_micros=account.balance,
            payg_reserved_micros=self._state.payg_reservations.total(account_id),
            insider=account.insider.at(now),
            multiplier=fraction_text(self._state.multiplier(account, now)),
            applied=dict(self._applied),
        )

    async def events(self, request: UsageEventsRequest) -> UsageEventsReply:
        """A page of the account's calls by keyset on (occurred_at, event_id), which the index
        usage_account_time_event orders: no OFFSET, so every page costs the same, however deep.
        One row more than asked says whether there are more."""
        limit = min(max(request.limit, 1), 1000)
        newer = request.after is not None
        bound = request.after or request.before
        conditions, args = ["account_id = $1"], list[object]([request.account_id])
        if bound is not None:
            args += [bound.occurred_at, bound.event_id]
            conditions.append(f"(occurred_at, event_id) {'>' if newer else '<'} (${len(args) - 1}, ${len(args)})")
        for column in ("key_id", "model", "conversation_id", "billing_mode"):
            if (value := getattr(request, column)) is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        order = "ASC" if newer else "DESC"
        rows = await self._pool.fetch(
            f"""SELECT event_id, account_id, occurred_at, model, input_tokens, output_tokens, cached_tokens,
                       images, billing_mode, key_id, usd_cost_micros, flows_micros, usd_per_flow, multiplier,
                       conversation_id
                FROM {self._schema}.usage WHERE {" AND ".join(conditions)}
                ORDER BY occurred_at {order}, event_id {order} LIMIT {limit + 1}""",
            *args,
        )
        events = [UsageRecorded(**dict(row)) for row in rows[:limit]]
        if newer:
            events.reverse()
        return UsageEventsReply(events=events, more=len(rows) > limit)
