"""A rebuild equals the live projection only if each projection is a function of the events alone:
not of the batch boundaries (a rebuild reads far bigger batches than the live runner), nor of
how the partitions' events interleave (one account's events keep their order, nothing else
does). Each projection here applies the same events batched and interleaved differently, into
fresh copies of its tables, and the copies must be identical, row for row."""

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import pytest

from libs.eventlog.projection import Applied
from libs.replay.rebuild import Rebuildable
from libs.replay.tables import clone_tables, drop_schema
from libs.replay.verify import compare
from libs.settings import Settings
from proto.v1 import (
    AccountCreated,
    AccountSuspended,
    AccountUnsuspended,
    BalanceToppedUp,
    FlowRateChanged,
    InsiderStatusEnded,
    InsiderStatusSet,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    MultiplierChanged,
    PaymentRecorded,
    PlanChangeCancelled,
    PlanChanged,
    UsageRecorded,
)
from proto.v1.events import AnyEvent
from services.billing.projection import BillingProjection
from services.ingress.directory import Directory
from services.ingress.projection import IngressProjection
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota.projection import QuotaProjection
from services.quota.state import QuotaState
from services.refund.projection import RefundProjection

pytestmark = pytest.mark.connected
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
RATE = Fraction(5, 198)

PROJECTIONS: dict[str, Callable[[], Rebuildable]] = {
    "ingress": lambda: IngressProjection(Directory(RATE)),
    "quota": lambda: QuotaProjection(QuotaState(RATE)),
    "keys": lambda: KeysProjection(KeyRegistry()),
    "billing": lambda: BillingProjection(),
    "refund": lambda: RefundProjection(),
}


def usage(n: int, account: str, at: datetime, key_id: str | None = None, mode: str = "subscription") -> UsageRecorded:
    return UsageRecorded(
        event_id=f"u{n}", account_id=account, occurred_at=at, model="deepseek/deepseek-chat", input_tokens=1000,
        output_tokens=500, billing_mode=mode, key_id=key_id, usd_cost_micros=700 + n, flows_micros=30_000 + n,
        usd_per_flow="5/198", multiplier="1", client_hash=f"client{n % 3}" if n % 2 else None,
        agent_hash="agent" if n % 4 == 1 else None,
    )  # type: ignore[arg-type]  # fmt: skip


def history() -> list[AnyEvent]:
    """Two accounts and the system account; usage before a key exists and under another account's
    key, late usage that opens windows before later ones, a duplicate, plan changes, PAYG."""
    a, b, key = "acc_a", "acc_b", "key_a"
    key_args = {"account_id": a, "key_id": key, "name": "k", "kind": "subscription", "prefix": "sk-ss-v1-"}
    pro_until = T0 + timedelta(days=31)
    return [
        AccountCreated(event_id="a1", account_id=a, occurred_at=T0 - 200 * H, name="a"),
        AccountCreated(event_id="b1", account_id=b, occurred_at=T0 - 200 * H, name="b", multiplier="5/4"),
        usage(1, a, T0 + 40 * H, key_id=key),  # the key does not exist yet (and the time is the client's)
        KeyCreated(event_id="k1", occurred_at=T0 + H, key_hash="h1", last4="0001", **key_args),  # type: ignore[arg-type]
        usage(2, b, T0 + 50 * H, key_id=key),  # another account names a's key
        usage(3, a, T0 + 2 * H, key_id=key),
        PaymentRecorded(event_id="p1", account_id=a, occurred_at=T0 + 3 * H, payment_ref="r1", plan="pro",
                        amount_micros=20_000_000),
        PlanChanged(event_id="c1", account_id=a, occurred_at=T0 + 3 * H, plan="pro", previous_plan="free",
                    period_anchor=T0 + 3 * H, reason="payment", paid_until=pro_until),
        usage(4, a, T0 + 4 * H),
        usage(5, a, T0 - 3 * H),  # late: a window before the ones already open
        usage(4, a, T0 + 4 * H),  # a duplicate
        KeyRotated(event_id="k2", account_id=a, occurred_at=T0 + 5 * H, key_id=key, key_hash="h2",
                   previous_key_hash="h1", last4="0002"),
        usage(6, a, T0 + 6 * H, key_id=key),
        KeyRevoked(event_id="k3", account_id=a, occurred_at=T0 + 7 * H, key_id=key, key_hash="h2"),
        AccountSuspended(event_id="s1", account_id=b, occurred_at=T0 + 7 * H, reason="resale"),
        AccountUnsuspended(event_id="s2", account_id=b, occurred_at=T0 + 8 * H),
        AccountSuspended(event_id="s3", account_id=b, occurred_at=T0 + 11 * H),
        AccountSuspended(event_id="s4", account_id=a, occurred_at=T0 + 11 * H),
        AccountUnsuspended(event_id="s5", account_id=a, occurred_at=T0 + 12 * H),
        BalanceToppedUp(event_id="t1", account_id=b, occurred_at=T0 + H, amount_micros=5_000_000, topup_ref="t"),
        usage(7, b, T0 + 3 * H, mode="payg"),
        usage(8, b, T0 - 100 * H),
        MultiplierChanged(event_id="m1", account_id=b, occurred_at=T0 + 8 * H, multiplier="1"),
        usage(9, b, T0 + 9 * H),
        # b: Max, then a downgrade to Pro scheduled for the end of the Max month, refunded (withdrawn)
        PaymentRecorded(event_id="p2", account_id=b, occurred_at=T0 + 9 * H, payment_ref="r2", plan="max",
                        amount_micros=100_000_000),
        PlanChanged(event_id="c3", account_id=b, occurred_at=T0 + 9 * H, plan="max", previous_plan="free",
                    period_anchor=T0 + 9 * H, reason="payment", paid_until=pro_until + 9 * H, payment_ref="r2"),
        PaymentRecorded(event_id="p3", account_id=b, occurred_at=T0 + 10 * H, payment_ref="r3", plan="pro",
                        amount_micros=20_000_000),
        PlanChanged(event_id="c4", account_id=b, occurred_at=pro_until + 9 * H, plan="pro", previous_plan="max",
                    period_anchor=pro_until + 9 * H, reason="payment", paid_until=pro_until + 40 * H,
                    payment_ref="r3"),
        PlanChangeCancelled(event_id="x4", account_id=b, occurred_at=T0 + 11 * H, plan_change_id="c4"),
        PlanChanged(event_id="c2", account_id=a, occurred_at=pro_until, plan="free", previous_plan="pro",
                    period_anchor=pro_until, reason="period_end"),
        FlowRateChanged(event_id="f1", occurred_at=T0 + 10 * H, usd_per_flow="1/40"),
        usage(10, a, T0 + 30 * H),
        # a: an insider from before its Pro month, ended by the lapse to Free; b: marked, then unmarked
        InsiderStatusSet(event_id="i1", account_id=a, occurred_at=T0 + 2 * H, insider=True),
        InsiderStatusSet(event_id="i2", account_id=b, occurred_at=T0 + 2 * H, insider=True),
        usage(11, a, T0 + 31 * H),
        InsiderStatusSet(event_id="i3", account_id=b, occurred_at=T0 + 12 * H, insider=False),
        InsiderStatusEnded(event_id="i4", account_id=a, occurred_at=pro_until, insider_status_id="i1"),
    ]  # fmt: skip


def by_account_first(events: list[Applied]) -> list[Applied]:
    """Another interleaving of the partitions: every account's events in their order, accounts one after another."""
    return sorted(events, key=lambda e: str(getattr(e.event, "account_id", "")), reverse=True)


def in_batches(events: list[Applied], sizes: Callable[[], int]) -> list[list[Applied]]:
    batches, start = [], 0
    while start < len(events):
        size = sizes()
        batches.append(events[start : start + size])
        start += size
    return batches


async def project(conn: asyncpg.Connection, projection: Rebuildable, batches: list[list[Applied]]) -> None:
    for batch in batches:
        applied = [item for item in batch if type(item.event).__name__ in projection.event_types]
        async with conn.transaction():
            after_commit = await projection.apply(conn, applied)
        if after_commit is not None:
            after_commit()


@pytest.mark.parametrize("name", PROJECTIONS)
async def test_a_projection_is_a_function_of_the_events_alone(settings: Settings, name: str) -> None:
    live = PROJECTIONS[name]()
    rng = random.Random(7)
    events = [Applied(seq, event) for seq, event in enumerate(history(), 1)]  # a stream sequence each
    runs = {
        "one_batch": in_batches(events, lambda: len(events)),
        "one_by_one": in_batches(events, lambda: 1),
        "interleaved_randomly_batched": in_batches(by_account_first(events), lambda: rng.randint(1, 5)),
    }
    conn = await asyncpg.connect(settings.database_url)
    try:
        for run, batches in runs.items():
            await clone_tables(conn, live.schema, f"{name}_{run}", live.tables)
            await project(conn, live.rebuilt_into(f"{name}_{run}"), batches)
        for run in list(runs)[1:]:
            assert await compare(conn, f"{name}_one_batch", f"{name}_{run}", live.tables) == [], run
        assert await conn.fetchval(f"SELECT count(*) FROM {name}_one_batch.{live.tables[1]}") > 0
        if name == "keys":  # suspensions too, both accounts'
            assert await conn.fetchval(f"SELECT count(*) FROM {name}_one_batch.access WHERE suspended") == 1
        if name in ("ingress", "quota"):  # every insider mark and its end
            assert await conn.fetchval(f"SELECT count(*) FROM {name}_one_batch.insider") == 4
        if name == "billing":  # each account's latest mark; a's ended by the lapse
            rows = await conn.fetch(f"SELECT account_id, insider, ended_at FROM {name}_one_batch.insiders ORDER BY 1")
            assert [tuple(r) for r in rows] == [("acc_a", True, T0 + timedelta(days=31)), ("acc_b", False, None)]
            assert (
                await conn.fetchval(f"SELECT sum(calls) FROM {name}_one_batch.abuse_clients") == 6
            )  # the odd-numbered calls
            assert await conn.fetchval(f"SELECT count(*) FROM {name}_one_batch.abuse_hours") > 0
    finally:
        for run in runs:
            await drop_schema(conn, f"{name}_{run}")
        await conn.close()
