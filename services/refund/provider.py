"""Paying money back. The refund service asks a PaymentProvider for a payout with an
idempotency key (the refund id): asked twice, say after a crash between the payout and
recording it, a provider pays once and answers with the same payout.

LocalPaymentProvider pays nothing real: it keeps its books in refund.payouts (one row per
idempotency key, enforced by the primary key) and records each payout as a RefundPaidOut
event. It can be told to decline payouts, for tests and demos."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from libs.eventlog.publisher import EventPublisher
from proto.v1 import RefundPaidOut
from services.refund.projection import insert_payout

_NAMESPACE = uuid.UUID("9b1c3c55-5d0e-4b8e-8f0a-6a3c2f1d7e42")


class PayoutDeclined(Exception):
    """The provider refused the payout; nothing was paid."""


@dataclass(frozen=True)
class Payout:
    payout_id: str
    amount_micros: int


class PaymentProvider(Protocol):
    name: str

    async def payout(
        self, *, idempotency_key: str, account_id: str, refund_id: str, amount_micros: int, now: datetime
    ) -> Payout: ...


class LocalPaymentProvider:
    name = "local"

    def __init__(self, pool: asyncpg.Pool, publisher: EventPublisher, schema: str) -> None:
        self._pool = pool
        self._publisher = publisher
        self._schema = schema
        self.fail_payouts = False

    async def payout(
        self, *, idempotency_key: str, account_id: str, refund_id: str, amount_micros: int, now: datetime
    ) -> Payout:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", idempotency_key)
            done = await self._paid(conn, idempotency_key)
            if done is not None:
                return done
            if self.fail_payouts:
                raise PayoutDeclined("the payment provider declined the payout (local provider told to fail)")
            key = str(uuid.uuid5(_NAMESPACE, idempotency_key))
            event = RefundPaidOut(
                event_id=key, account_id=account_id, occurred_at=now, payout_id=f"po_{key.replace('-', '')[:24]}",
                idempotency_key=idempotency_key, refund_id=refund_id, amount_micros=amount_micros,
                provider=self.name,
            )  # fmt: skip
            await insert_payout(conn, self._schema, event)
            await self._publisher.publish([event])  # commits only once the log has it
        return Payout(event.payout_id, event.amount_micros)

    async def _paid(self, conn: asyncpg.Connection, idempotency_key: str) -> Payout | None:
        row = await conn.fetchrow(
            f"SELECT payout_id, amount_micros FROM {self._schema}.payouts WHERE idempotency_key = $1",
            idempotency_key,
        )
        return Payout(row["payout_id"], row["amount_micros"]) if row else None
