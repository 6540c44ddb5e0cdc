"""billing's commands: payments and top-ups, decided here from billing's own projection and
published to the log.

Before a command decides, two things hold:
- it is the only command of its account in progress (a lock), so that two concurrent
  payments cannot both decide from the same plan;
- the projection has applied every account event of the account stored so far (a sequence
  barrier on the stream), so that a payment sees the one just before it (read-your-writes)
  and a refund's drop to Free as well.
The lock is in memory: one instance, the leader, decides (services/billing/app.py); the barrier
reads the checkpoints in Postgres, whichever instance projects the account's partition.

A payment_ref (or topup_ref) recorded before answers with what was recorded, once the
barrier shows it: a webhook delivered twice is one payment, however late the second comes.

billing also decides when an insider's paid subscription lapsed to Free (InsiderStatusEnded): at
a payment (the one after a lapse records the lapse with it) and in a periodic sweep, under the
same lock and barrier.
"""

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import Any

import asyncpg
import nats.js
import nats.js.errors

from libs.clock import Clock
from libs.eventlog.barrier import applied_through
from libs.eventlog.projection import TRANSIENT_ERRORS
from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.eventlog.subjects import ACCOUNT_TOKEN
from libs.refusal import Refusal
from libs.rpc import Replier
from proto.v1 import (
    BalanceToppedUp,
    InsiderStatusEnded,
    PaymentAccepted,
    PaymentRecorded,
    PlanChanged,
    RecordPayment,
    TopUpAccepted,
    TopUpBalance,
    rpc,
)
from services.billing import domain
from services.billing.domain import Subscription

log = logging.getLogger(__name__)
Command = RecordPayment | TopUpBalance


class Unavailable(Exception):
    """The projection did not catch up with the account in time: nothing was decided."""


RETRIED: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, PublishFailed, Unavailable)
"""Transient failures: the caller should retry (with the same payment_ref or topup_ref, a retry
records nothing twice)."""


class BillingCommands:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        js: nats.js.JetStreamContext,
        publisher: EventPublisher,
        prices: Mapping[str, int],
        clock: Clock,
        *,
        stream: str,
        barrier_wait_s: float,
        sweep_s: float = 30.0,
    ) -> None:
        self._pool, self._schema, self._js, self._publisher = pool, schema, js, publisher
        self._prices, self._clock = prices, clock
        self._stream, self._barrier_wait_s = stream, barrier_wait_s
        self._sweep_s = sweep_s
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        """One lock per account with a command in progress or waiting; gone with the last of them."""

    def serve(self, runtime: Replier) -> None:
        """Many at once (max_workers): a command may wait for the projection (the barrier), and one
        account's wait must not hold up another's."""
        options: dict[str, Any] = {"invalid": (asyncpg.DataError,), "transient": RETRIED, "max_workers": 64,
                                   "retry_message": "billing did not record it; retry"}  # fmt: skip
        runtime.reply(rpc.BILLING_RECORD_PAYMENT, self.record_payment, **options)
        runtime.reply(rpc.BILLING_TOP_UP, self.top_up, **options)

    async def record_payment(self, command: RecordPayment) -> PaymentAccepted:
        accepted = await self.handle(command)
        assert isinstance(accepted, PaymentAccepted)
        return accepted

    async def top_up(self, command: TopUpBalance) -> TopUpAccepted:
        accepted = await self.handle(command)
        assert isinstance(accepted, TopUpAccepted)
        return accepted

    async def handle(self, command: Command) -> PaymentAccepted | TopUpAccepted:
        if not ACCOUNT_TOKEN.match(command.account_id):
            raise Refusal("invalid_request", f"account_id: not an account id: {command.account_id!r}", "account_id")
        async with self._lock(command.account_id):
            await self._caught_up(command.account_id)
            if isinstance(command, RecordPayment):
                return await self._record_payment(command)
            return await self._top_up(command)

    def _lock(self, account_id: str) -> asyncio.Lock:
        lock = self._locks.get(account_id)
        if lock is None:
            lock = self._locks[account_id] = asyncio.Lock()
        return lock

    async def sweep_insiders(self) -> None:
        """Forever: end the insider marks whose paid subscription lapsed with no payment since."""
        while True:
            await self.end_lapsed_insiders()
            await asyncio.sleep(self._sweep_s)

    async def end_lapsed_insiders(self) -> int:
        """Record InsiderStatusEnded for each mark in force whose subscription lapsed by now; how many."""
        rows = await self._pool.fetch(
            f"SELECT account_id FROM {self._schema}.insiders WHERE insider AND ended_at IS NULL"
        )
        ended = 0
        for row in rows:
            try:
                async with self._lock(row["account_id"]):
                    await self._caught_up(row["account_id"])
                    if (event := await self._lapsed_insider(row["account_id"], [])) is not None:
                        await self._publisher.publish([event])
                        ended += 1
            except RETRIED as exc:  # the next sweep tries again
                log.warning("insider sweep of %s failed transiently: %r", row["account_id"], exc)
        return ended

    async def _lapsed_insider(self, account_id: str, decided: list[Subscription]) -> InsiderStatusEnded | None:
        """The end of the account's insider mark in force, if its subscription (with the changes just
        decided) lapsed to Free by now."""
        async with self._pool.acquire() as conn:
            mark = await conn.fetchrow(
                f"""SELECT status_id, marked_at FROM {self._schema}.insiders
                    WHERE account_id = $1 AND insider AND ended_at IS NULL""",
                account_id,
            )
            if mark is None:
                return None
            rows = await conn.fetch(
                f"""SELECT effective_at, plan, paid_until FROM {self._schema}.subscriptions
                    WHERE account_id = $1 AND NOT withdrawn""",
                account_id,
            )
        changes = [Subscription(**dict(row)) for row in rows] + decided
        return domain.insider_ended(account_id, mark["status_id"], mark["marked_at"], changes, self._clock.now())

    async def _record_payment(self, command: RecordPayment) -> PaymentAccepted:
        async with self._pool.acquire() as conn:
            recorded = await conn.fetchrow(
                f"""SELECT p.plan, p.amount_micros, p.occurred_at AS paid_at, s.effective_at, s.previous_plan,
                           s.paid_until
                    FROM {self._schema}.history p JOIN {self._schema}.subscriptions s ON s.event_id = $2
                    WHERE p.event_id = $1""",
                domain.event_id("payment", command.account_id, command.payment_ref),
                domain.event_id("plan", command.account_id, command.payment_ref),
            )
            rows = await conn.fetch(
                f"""SELECT effective_at, plan, paid_until FROM {self._schema}.subscriptions
                    WHERE account_id = $1 AND NOT withdrawn""",
                command.account_id,
            )
            created_at = await conn.fetchval(
                f"SELECT created_at FROM {self._schema}.accounts WHERE account_id = $1", command.account_id
            )
        if recorded is not None:
            if (recorded["plan"], recorded["amount_micros"]) != (command.plan, command.amount_micros):
                raise Refusal(
                    "ref_conflict",
                    f"payment_ref: {command.payment_ref!r} was recorded for another plan or amount",
                    "payment_ref",
                )
            return PaymentAccepted(
                account_id=command.account_id, payment_ref=command.payment_ref, duplicate=True, **dict(recorded)
            )
        changes = [Subscription(**dict(row)) for row in rows]
        payment, change = domain.record_payment(command, changes, self._prices, self._clock.now(), created_at)
        decided = Subscription(change.occurred_at, change.plan, change.paid_until)
        ended = await self._lapsed_insider(command.account_id, [decided])
        acks = await self._publisher.publish([payment, change] + ([ended] if ended is not None else []))
        return _payment_accepted(payment, change, max(ack.seq for ack in acks))

    async def _top_up(self, command: TopUpBalance) -> TopUpAccepted:
        if command.topup_ref is not None:
            recorded = await self._pool.fetchrow(
                f"SELECT amount_micros, occurred_at FROM {self._schema}.history WHERE event_id = $1",
                domain.event_id("topup", command.account_id, command.topup_ref),
            )
            if recorded is not None:
                if recorded["amount_micros"] != command.amount_micros:
                    message = f"topup_ref: {command.topup_ref!r} was recorded with another amount"
                    raise Refusal("ref_conflict", message, "topup_ref")
                return TopUpAccepted(
                    account_id=command.account_id, topup_ref=command.topup_ref, amount_micros=command.amount_micros,
                    topped_up_at=recorded["occurred_at"], duplicate=True,
                )  # fmt: skip
        event = domain.top_up(command, self._clock.now())
        [ack] = await self._publisher.publish([event])
        return _topped_up(event, ack.seq)

    async def _caught_up(self, account_id: str) -> None:
        """Wait until the projection has applied the account's latest account event stored so far
        (usage does not change what billing decides, so the barrier does not wait for it)."""
        seq, reached = await applied_through(
            self._js, self._pool, stream=self._stream, projection="billing", schema=self._schema,
            account_id=account_id, category="account", timeout_s=self._barrier_wait_s,
        )  # fmt: skip
        if not reached:
            raise Unavailable(f"the billing projection has not applied stream sequence {seq} yet")


def _payment_accepted(payment: PaymentRecorded, change: PlanChanged, seq: int) -> PaymentAccepted:
    assert change.paid_until is not None
    return PaymentAccepted(
        account_id=payment.account_id, payment_ref=payment.payment_ref, plan=change.plan,
        previous_plan=change.previous_plan, amount_micros=payment.amount_micros, paid_at=payment.occurred_at,
        effective_at=change.occurred_at, paid_until=change.paid_until, seq=seq,
    )  # fmt: skip


def _topped_up(event: BalanceToppedUp, seq: int) -> TopUpAccepted:
    return TopUpAccepted(
        account_id=event.account_id, topup_ref=event.topup_ref, amount_micros=event.amount_micros,
        topped_up_at=event.occurred_at, seq=seq,
    )  # fmt: skip
