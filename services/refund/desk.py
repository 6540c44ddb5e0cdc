"""The refund desk: previews, requests and the settling of refunds.

A request is accepted (status processing) once the refund projection has applied every
event of the account stored so far — the sequence barrier — and the account's latest
payment is refundable as it stands. It records what must be counted: usage stored up to
the barrier's stream sequence, and the usage of the calls admitted and still running
then (their quota reservations). Settling waits for those calls to report their usage
(or time out) and for the barrier again, computes the final lines, pays out through the
provider with the refund id as idempotency key, and records the outcome: succeeded (and
the account drops to Free at once; or, for a payment whose plan had not started yet, that
scheduled change is withdrawn and the plan in force runs on), failed, or cancelled when
nothing is left to refund.

The desk decides as the refund leader (services/refund/app.py): every transaction that decides
(a request, a cancel, a payout's start, the outcome, the drop to Free) is fenced by the leader
lease's revision (libs/fencing.py), so a leader frozen past its lease decides nothing after the
next one leads. The payout itself is idempotent by the refund id at the provider.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from nats.aio.client import Client
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from libs import failpoints
from libs.cancelling import cancel_and_wait
from libs.clock import Clock
from libs.eventlog.barrier import applied_through, until_quota_applied
from libs.eventlog.projection import TRANSIENT_ERRORS
from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.fencing import LeaderFence
from libs.pricing.catalog import FREE
from libs.refusal import Refusal
from libs.rpc import Unavailable, ask
from proto.v1 import (
    InflightRequest,
    PlanChangeCancelled,
    PlanChanged,
    RefundCancelled,
    RefundFailed,
    RefundPayoutStarted,
    RefundQuote,
    RefundRequested,
    RefundSucceeded,
    RefundView,
    rpc,
)
from services.refund import domain, metrics, tables
from services.refund.domain import Lines, Payment
from services.refund.projection import insert_refund, settle_refund, start_payout
from services.refund.provider import PaymentProvider, PayoutDeclined

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("2d6f0f0e-8c1a-4a4b-9d55-0b7e1f3c9a10")
RETRIED: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, PublishFailed, Unavailable)
QUOTA_SYNC_S = 30.0
"""How long a settled refund waits for quota to show Free before it says succeeded anyway."""


def not_refundable(reason: str) -> Refusal:
    return Refusal("not_refundable", domain.MESSAGES[reason], reason=reason)


class RefundDesk:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        nc: Client,
        publisher: EventPublisher,
        provider: PaymentProvider,
        clock: Clock,
        fence: LeaderFence,
        *,
        stream: str,
        request_timeout_s: float,
        barrier_wait_s: float,
    ) -> None:
        self._pool, self._schema, self._nc, self._js = pool, schema, nc, nc.jetstream()
        self._publisher, self._provider, self._clock, self._fence = publisher, provider, clock, fence
        self._stream = stream
        self._request_timeout_s = request_timeout_s
        self._barrier_wait_s = barrier_wait_s
        self._settling: dict[str, asyncio.Task[None]] = {}

    # -- reads ------------------------------------------------------------------------

    async def preview(self, account_id: str) -> RefundQuote:
        """The refund as it stands: usage stored so far, and how many calls are still running."""
        pending = await self._inflight(account_id)
        cutoff = await self._caught_up(account_id, self._barrier_wait_s)
        return await self._quote(account_id, cutoff, pending, self._clock.now())

    async def get(self, account_id: str, refund_id: str) -> RefundView:
        row = await self._pool.fetchrow(
            f"SELECT * FROM {self._schema}.refunds WHERE refund_id = $1 AND account_id = $2", refund_id, account_id
        )
        if row is None:
            raise Refusal("refund_not_found", f"no refund {refund_id!r} for this account", "refund_id")
        return _view(row)

    async def refunds(self, account_id: str) -> list[RefundView]:
        rows = await self._pool.fetch(
            f"SELECT * FROM {self._schema}.refunds WHERE account_id = $1 ORDER BY requested_at DESC LIMIT 100",
            account_id,
        )
        return [_view(row) for row in rows]

    # -- request ----------------------------------------------------------------------

    async def request(self, account_id: str) -> RefundView:
        now = self._clock.now()
        pending = await self._inflight(account_id)  # before the barrier: a call ending in between is in both
        cutoff = await self._caught_up(account_id, self._barrier_wait_s)
        quote = await self._quote(account_id, cutoff, pending, now)
        if not quote.eligible:
            metrics.refusals.add(1, {"reason": quote.reason or "unknown"})
            raise not_refundable(quote.reason or "free_plan")
        assert quote.payment_ref and quote.plan and quote.paid_at
        refund_id = f"rf_{uuid.uuid4().hex[:24]}"
        event = RefundRequested(
            event_id=str(uuid.uuid5(_NAMESPACE, f"{refund_id}/requested")), account_id=account_id, occurred_at=now,
            refund_id=refund_id, payment_ref=quote.payment_ref, plan=quote.plan, paid_at=quote.paid_at,
            paid_micros=quote.paid_micros, cutoff_seq=cutoff, pending_reservations=pending,
            usage_micros=quote.usage_micros, refunded_before_micros=quote.refunded_before_micros,
            fee_micros=quote.fee_micros, amount_micros=quote.amount_micros,
        )  # fmt: skip
        async with self._deciding() as conn:
            if not await insert_refund(conn, self._schema, event):  # waits out a concurrent request, then loses
                statuses = [
                    status for status, _ in await tables.refunds_of(conn, self._schema, account_id, quote.payment_ref)
                ]
                raise not_refundable("already_refunded" if "succeeded" in statuses else "refund_in_progress")
            await self._publisher.publish([event])  # the row commits only once the log has the event
        metrics.refunds.add(1, {"status": "requested"})
        self.settle_in_background(refund_id)
        return await self.get(account_id, refund_id)

    async def cancel(self, account_id: str, refund_id: str) -> RefundView:
        """Call the refund off, unless its payout has started (the row lock orders this against it)."""
        async with self._deciding() as conn:
            row = await conn.fetchrow(
                f"SELECT * FROM {self._schema}.refunds WHERE refund_id = $1 AND account_id = $2 FOR UPDATE",
                refund_id,
                account_id,
            )
            if row is None:
                raise Refusal("refund_not_found", f"no refund {refund_id!r} for this account", "refund_id")
            reason = domain.cancel_refusal(row["status"], row["payout_started"])
            if reason is not None:
                raise Refusal("not_cancellable", domain.MESSAGES[reason], reason=reason)
            event = RefundCancelled(
                event_id=_event_id(refund_id, "cancelled"), account_id=account_id, occurred_at=self._clock.now(),
                refund_id=refund_id, reason="cancelled_by_user", usage_micros=row["usage_micros"],
            )  # fmt: skip
            await settle_refund(conn, self._schema, event)
            await self._publisher.publish([event])  # the cancel commits only once the log has it
        metrics.refunds.add(1, {"status": "cancelled"})
        return await self.get(account_id, refund_id)

    # -- settling ---------------------------------------------------------------------

    async def resume(self) -> None:
        """Settle what a previous run left processing (it may have paid out already: the provider knows)."""
        for row in await self._pool.fetch(f"SELECT refund_id FROM {self._schema}.refunds WHERE status = 'processing'"):
            self.settle_in_background(row["refund_id"])

    def settle_in_background(self, refund_id: str) -> None:
        if refund_id not in self._settling:
            task = asyncio.create_task(self.settle(refund_id), name=f"settle-{refund_id}")
            self._settling[refund_id] = task
            task.add_done_callback(lambda _: self._settling.pop(refund_id, None))

    async def close(self) -> None:
        """Stop settling (a refund left `processing` is settled again at the next start)."""
        await asyncio.gather(*(cancel_and_wait(task) for task in list(self._settling.values())))

    async def settle(self, refund_id: str) -> None:
        """Settle the refund, retrying transient failures (NATS or Postgres away) for as long as it takes."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RETRIED), wait=wait_exponential(multiplier=0.1, max=5.0)
            ):
                with attempt:
                    await self._settle_once(refund_id)
        except Exception:
            log.exception("refund %s: settling failed; it stays processing until the next start", refund_id)

    async def _settle_once(self, refund_id: str) -> None:
        row = await self._row(refund_id)
        if row is None or row["status"] != "processing":
            return
        account_id = row["account_id"]
        await self._calls_reported(account_id, set(row["pending_reservations"]))
        await self._caught_up(account_id, None)
        async with self._pool.acquire() as conn:
            row = await self._row(refund_id, conn)  # a previous run may have settled it; the barrier shows it
            if row is None or row["status"] != "processing":
                return
            paid = Payment(row["payment_ref"], row["plan"], row["paid_at"], row["paid_micros"])
            change_id, change = await tables.change_of(conn, self._schema, account_id, row["payment_ref"])
            period = domain.payment_period(paid, change)
            usage = await tables.usage(
                conn, self._schema, account_id, period, row["cutoff_seq"], row["pending_reservations"]
            )
            before = domain.refunded_before(await tables.refunds_of(conn, self._schema, account_id, row["payment_ref"]))
            plan_now = domain.plan_at(await tables.plans(conn, self._schema, account_id), self._clock.now())
        result = domain.lines(row["paid_micros"], usage, before)
        now = self._clock.now()
        if result.amount <= 0:
            reason = "usage_exceeds_payment" if result.refundable <= 0 else "nothing_to_refund"
            await self._record(RefundCancelled(
                event_id=_event_id(refund_id, "cancelled"), account_id=account_id, occurred_at=now,
                refund_id=refund_id, reason=reason, usage_micros=usage,
            ))  # fmt: skip
            return
        if not await self._start_payout(refund_id, account_id, now):
            return  # cancelled while its usage was being counted
        try:
            payout = await self._provider.payout(
                idempotency_key=refund_id, account_id=account_id, refund_id=refund_id, amount_micros=result.amount,
                now=now,
            )  # fmt: skip
        except PayoutDeclined as exc:
            await self._record(RefundFailed(
                event_id=_event_id(refund_id, "failed"), account_id=account_id, occurred_at=now,
                refund_id=refund_id, reason=str(exc),
            ))  # fmt: skip
            return
        failpoints.hit("after_payout")
        succeeded = RefundSucceeded(
            event_id=_event_id(refund_id, "succeeded"), account_id=account_id, occurred_at=now, refund_id=refund_id,
            payout_id=payout.payout_id, usage_micros=usage, refunded_before_micros=before,
            fee_micros=result.refundable - payout.amount_micros, amount_micros=payout.amount_micros,
        )  # fmt: skip
        if change_id is not None and domain.not_started(change, now):  # a scheduled change: withdrawn
            withdrawn = PlanChangeCancelled(
                event_id=_event_id(refund_id, "plan"), account_id=account_id, occurred_at=now,
                plan_change_id=change_id,
            )  # fmt: skip
            await self._record(succeeded, withdrawn)
            return
        to_free = PlanChanged(
            event_id=_event_id(refund_id, "plan"), account_id=account_id, occurred_at=now, plan=FREE,
            previous_plan=plan_now, period_anchor=now, reason="refund",
        )  # fmt: skip
        # Free first, then "succeeded": this projection settles the refund from the log too, so a
        # RefundSucceeded stored before quota shows Free would say succeeded while Pro still works.
        # A crash in between settles again on the next start (the payout and the event ids repeat).
        async with self._deciding():
            [stored] = await self._publisher.publish([to_free])
        await self._until_quota_applied(account_id, stored.seq)
        await self._record(succeeded)

    async def _start_payout(self, refund_id: str, account_id: str, now: datetime) -> bool:
        """Mark the payout started unless the refund was cancelled; False when it was."""
        started = RefundPayoutStarted(
            event_id=_event_id(refund_id, "payout"), account_id=account_id, occurred_at=now, refund_id=refund_id
        )
        async with self._deciding() as conn:
            row = await conn.fetchrow(
                f"SELECT status, payout_started FROM {self._schema}.refunds WHERE refund_id = $1 FOR UPDATE",
                refund_id,
            )
            if row["status"] != "processing":
                return False
            if not row["payout_started"]:
                await start_payout(conn, self._schema, started)
                await self._publisher.publish([started])
        return True

    @asynccontextmanager
    async def _deciding(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that goes through only while this instance leads (libs/fencing.py)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence.check(conn)
            yield conn

    async def _record(
        self, event: RefundSucceeded | RefundFailed | RefundCancelled, *also: PlanChangeCancelled
    ) -> None:
        """Publish the outcome (with what it withdraws) and settle the refund's row: one fenced step."""
        async with self._deciding() as conn:
            await self._publisher.publish([event, *also])
            await settle_refund(conn, self._schema, event)
        status = {RefundSucceeded: "succeeded", RefundFailed: "failed", RefundCancelled: "cancelled"}[type(event)]
        metrics.refunds.add(1, {"status": status})
        if isinstance(event, RefundSucceeded):
            metrics.refunded_usd.add(event.amount_micros / 1_000_000)
            metrics.fees_usd.add(event.fee_micros / 1_000_000)

    async def _calls_reported(self, account_id: str, pending: set[str]) -> None:
        """Wait until the calls in flight at the request are no longer held by quota: quota lets a
        reservation go only once the call's usage is projected, its gateway released it, or its
        gateway is gone (its heartbeats stopped). However long a stream runs, its usage counts."""
        delay = 0.1
        while pending:
            pending &= set(await self._inflight(account_id))
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    # -- the sequence barrier and the other services ----------------------------------

    async def _caught_up(self, account_id: str, timeout_s: float | None) -> int:
        """Wait until this projection has applied every event of the account stored so far (or the
        timeout passes); return that last stream sequence, the cut-off of "recorded before"."""
        seq, _ = await applied_through(
            self._js, self._pool, stream=self._stream, projection="refund", schema=self._schema,
            account_id=account_id, timeout_s=timeout_s,
        )  # fmt: skip
        return seq

    async def _inflight(self, account_id: str) -> list[str]:
        inflight = await ask(self._nc, rpc.QUOTA_INFLIGHT, InflightRequest(account_id=account_id),
                             self._request_timeout_s)  # fmt: skip
        return inflight.reservation_ids

    async def _until_quota_applied(self, account_id: str, seq: int) -> None:
        """The sequence barrier on quota: wait until its projection has applied the PlanChanged to
        Free stored at `seq` (bounded: past QUOTA_SYNC_S the refund settles anyway)."""
        if not await until_quota_applied(
            self._nc, self._stream, seq, account_id, timeout_s=QUOTA_SYNC_S, request_timeout_s=self._request_timeout_s
        ):
            log.warning("refund: quota did not apply %s's Free in %.0f s; settling anyway", account_id, QUOTA_SYNC_S)

    # -- the projection's tables ------------------------------------------------------

    async def _quote(self, account_id: str, cutoff: int, pending: Sequence[str], now: datetime) -> RefundQuote:
        async with self._pool.acquire() as conn:
            payment = await tables.latest_payment(conn, self._schema, account_id)
            plan_now = domain.plan_at(await tables.plans(conn, self._schema, account_id), now)
            if payment is None:
                statuses: list[str] = []
                result: Lines | None = None
            else:
                refunds = await tables.refunds_of(conn, self._schema, account_id, payment.payment_ref)
                statuses = [status for status, _ in refunds]
                _, change = await tables.change_of(conn, self._schema, account_id, payment.payment_ref)
                usage = await tables.usage(
                    conn, self._schema, account_id, domain.payment_period(payment, change), cutoff, pending
                )
                result = domain.lines(payment.amount_micros, usage, domain.refunded_before(refunds))
        reason = domain.refusal(payment, plan_now, statuses, result, now)
        if payment is None or result is None:
            return RefundQuote(eligible=False, reason=reason, pending_calls=len(pending))
        return RefundQuote(
            eligible=reason is None, reason=reason, payment_ref=payment.payment_ref, plan=payment.plan,
            paid_at=payment.paid_at, refundable_until=payment.paid_at + domain.REFUND_WINDOW,
            paid_micros=result.paid, usage_micros=result.usage, refunded_before_micros=result.refunded_before,
            refundable_micros=result.refundable, fee_micros=result.fee, amount_micros=result.amount,
            pending_calls=len(pending),
        )  # fmt: skip

    async def _row(self, refund_id: str, conn: asyncpg.Connection | None = None) -> asyncpg.Record | None:
        query = f"SELECT * FROM {self._schema}.refunds WHERE refund_id = $1"
        return await (conn or self._pool).fetchrow(query, refund_id)


def _event_id(refund_id: str, outcome: str) -> str:
    """Deterministic: a settling repeated after a crash publishes the same events (deduplicated)."""
    return str(uuid.uuid5(_NAMESPACE, f"{refund_id}/{outcome}"))


def _view(row: asyncpg.Record) -> RefundView:
    fields = {f for f in RefundView.__struct_fields__}
    return RefundView(**{k: v for k, v in dict(row).items() if k in fields})
