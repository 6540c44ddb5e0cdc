"""quota's request/reply subjects, answered from memory (usage events from Postgres)."""

import time
from collections.abc import Mapping

import asyncpg
import msgspec
from nats.aio.msg import Msg

from libs.clock import Clock
from proto.v1 import (
    QuotaCheck,
    QuotaDecision,
    QuotaStatus,
    QuotaStatusRequest,
    UsageEventsReply,
    UsageEventsRequest,
    UsageRecorded,
    WindowStatus,
    encode,
)
from services.quota import metrics
from services.quota.domain.admission import AccountQuota, Limits, QuotaView, WindowView, decide, view
from services.quota.domain.periods import Segment
from services.quota.projection import QuotaState

CHECK_SUBJECT = "quota.check"
STATUS_SUBJECT = "quota.status"
EVENTS_SUBJECT = "quota.events"


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
        self, state: QuotaState, limits: Mapping[str, Limits], clock: Clock, pool: asyncpg.Pool, schema: str
    ) -> None:
        self._state = state
        self._limits = limits
        self._clock = clock
        self._pool = pool
        self._schema = schema
        self._check = msgspec.json.Decoder(QuotaCheck)
        self._status = msgspec.json.Decoder(QuotaStatusRequest)
        self._events = msgspec.json.Decoder(UsageEventsRequest)

    async def on_check(self, msg: Msg) -> None:
        started = time.perf_counter()
        decision = self.check(self._check.decode(msg.data))
        await msg.respond(encode(decision))
        metrics.check_seconds.record(time.perf_counter() - started)
        metrics.checks.add(1, {"decision": "admitted" if decision.admitted else decision.reason or "refused"})

    def check(self, request: QuotaCheck) -> QuotaDecision:
        account = self._state.accounts.get(request.account_id)
        if account is None:
            return QuotaDecision(admitted=False, billing_mode=None, reason="unknown_account")
        now = self._clock.now()
        reserved = self._state.reservations.total(request.account_id, now)
        decision = decide(account, self._limits, reserved, now)
        window = decision.view.window_5h
        if not decision.admitted:
            return QuotaDecision(
                admitted=False,
                billing_mode=None,
                reason=decision.reason,
                plan=decision.view.plan,
                flows_remaining_micros=max(0, window.limit - window.used - window.reserved),
                window_resets_at=window.resets_at,
                retry_after_s=decision.retry_after_s,
            )
        self._state.reservations.hold(request.account_id, request.reservation_id, request.estimated_flows_micros, now)
        return QuotaDecision(
            admitted=True,
            billing_mode="subscription",
            plan=decision.view.plan,
            flows_remaining_micros=max(
                0, window.limit - window.used - window.reserved - request.estimated_flows_micros
            ),
            window_resets_at=window.resets_at,
        )

    async def on_status(self, msg: Msg) -> None:
        await msg.respond(encode(self.status(self._status.decode(msg.data).account_id)))

    def status(self, account_id: str) -> QuotaStatus:
        now = self._clock.now()
        account = self._state.accounts.get(account_id)
        known = account is not None
        if account is None:
            account = AccountQuota(now, [Segment(now, "free", now, "")])
        quota: QuotaView = view(account, self._limits, self._state.reservations.total(account_id, now), now)
        return QuotaStatus(
            account_id=account_id,
            known=known,
            plan=quota.plan,
            window_5h=_window(quota.window_5h),
            weekly=_window(quota.weekly),
            monthly=_window(quota.monthly),
        )

    async def on_events(self, msg: Msg) -> None:
        request = self._events.decode(msg.data)
        rows = await self._pool.fetch(
            f"""SELECT event_id, account_id, occurred_at, model, input_tokens, output_tokens, cached_tokens,
                       images, billing_mode, key_id, usd_cost_micros, flows_micros, usd_per_flow, multiplier
                FROM {self._schema}.usage WHERE account_id = $1
                ORDER BY occurred_at DESC, event_id DESC LIMIT $2""",
            request.account_id,
            min(max(request.limit, 1), 1000),
        )
        events = [UsageRecorded(**dict(row)) for row in rows]
        await msg.respond(encode(UsageEventsReply(events=events)))
