"""Projections part of `python -m bench` (`--part projections`): how fast each projection that reads
every usage event (quota, keys, billing, refund) applies batches, beside the bare batched insert
measured in the same run on the same Postgres.

Two measurements:
  * apply: each projection's `apply` driven as the runner drives it (decode each event from its
    wire bytes, one transaction per batch with the checkpoint, the after-commit step), against a
    real Postgres and nothing else, one projection at a time: events/s and the share of the bench
    process's own CPU (the Python side) in the wall time. `--profile` prints cProfile's top items
    of quota's apply.
  * live (`--live`): the services themselves, each following the log while ingress takes usage,
    flat out and paced at --paced-rate: each projection's events/s and lag (p50/p99), with all four
    services, nats-server, Postgres and ingress sharing the machine's cores.

The usage is realistic: --accounts accounts on the Pro plan with a key each, calls spread over
the accounts, event time advancing at the rate the events are generated, 3 % of them late.
"""

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from libs.db import create_pool
from libs.eventlog.runner import AfterCommit, Applied, Projection, save_checkpoint
from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from proto.v1 import AccountCreated, KeyCreated, PlanChanged, UsageRecorded, decode_event, encode
from proto.v1.events import Event
from services.billing.projection import BillingProjection
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota.projection import QuotaProjection, QuotaState
from services.refund.projection import RefundProjection

MODELS = ("deepseek/deepseek-chat", "openai/gpt-5-mini", "anthropic/claude-sonnet-4.5", "qwen/qwen3-coder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", action="store_true", help="projections: cProfile quota's apply")
    parser.add_argument("--live", action="store_true", help="projections: also the services following ingest")


def account_events(n_accounts: int, start: datetime) -> list[Event]:
    """Each account created, with a key, on Pro from `start`, and a first call then (which opens its
    windows: the late calls of the bench land in them, as they do in a steady log)."""
    events: list[Event] = []
    for i in range(n_accounts):
        account = f"acc_pb{i:07d}"
        events.append(AccountCreated(event_id=f"ac-{i}", account_id=account, occurred_at=start, name=f"bench {i}"))
        events.append(
            KeyCreated(
                event_id=f"kc-{i}", account_id=account, occurred_at=start, key_id=f"key_pb{i:07d}", name="default",
                kind="subscription", key_hash=uuid.uuid4().hex * 2, prefix="sk-ss-v1-", last4="abcd",
            )
        )  # fmt: skip
        events.append(
            PlanChanged(
                event_id=f"plan-{i}", account_id=account, occurred_at=start, plan="pro", previous_plan="free",
                period_anchor=start, reason="payment", paid_until=start + timedelta(days=30),
            )
        )  # fmt: skip
    first = usage_events(n_accounts, n_accounts, start, per_second=n_accounts, late=0.0)
    return events + [msgspec.structs.replace(e, account_id=f"acc_pb{i:07d}", key_id=f"key_pb{i:07d}")
                     for i, e in enumerate(first)]  # fmt: skip


def usage_events(
    n: int, n_accounts: int, start: datetime, per_second: float, late: float = 0.03, seed: int = 1
) -> list[UsageRecorded]:
    """n calls from `start` on at `per_second` of event time, over the accounts; `late` of them late by
    up to an hour."""
    rng, catalog = random.Random(seed), load_catalog()
    rate = catalog.default_usd_per_flow
    prices: dict[tuple[str, int, int], Any] = {}
    events: list[UsageRecorded] = []
    for i in range(n):
        account = rng.randrange(n_accounts)
        model = catalog.models[MODELS[i % len(MODELS)]]
        at = start + timedelta(seconds=i / per_second)
        if rng.random() < late:
            at -= timedelta(minutes=rng.uniform(0, 60))
        tokens = (rng.randrange(100, 8000, 100), rng.randrange(10, 2000, 10))
        price = prices.get((model.id, *tokens))
        if price is None:
            price = prices[(model.id, *tokens)] = price_call(
                model, input_tokens=tokens[0], output_tokens=tokens[1], usd_per_flow=rate, multiplier=Fraction(1)
            )
        events.append(
            UsageRecorded(
                event_id=f"gw_{uuid.uuid4().hex}", account_id=f"acc_pb{account:07d}", occurred_at=at, model=model.id,
                input_tokens=tokens[0], output_tokens=tokens[1], billing_mode="subscription",
                key_id=f"key_pb{account:07d}", usd_cost_micros=price.usd_cost_micros, flows_micros=price.flows_micros,
                usd_per_flow=str(rate), multiplier="1", source="gateway", reservation_id=uuid.uuid4().hex,
                client_hash=f"c{account % 97:031x}", agent_hash="a" * 32,
            )
        )  # fmt: skip
    return events


class Driver:
    """Applies batches to a projection as the runner does: decode, one transaction with the checkpoint,
    then the after-commit step."""

    def __init__(self, pool: asyncpg.Pool, projection: Projection) -> None:
        self.pool, self.projection, self.seq = pool, projection, 0

    async def apply(self, wire: Sequence[bytes]) -> None:
        batch = []
        for data in wire:
            self.seq += 1
            batch.append(Applied(self.seq, decode_event(data)))
        after: AfterCommit | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            after = await self.projection.apply(conn, batch)
            await save_checkpoint(conn, self.projection, 0, self.seq)
        if after is not None:
            after()


def projections(rate: Fraction) -> dict[str, Callable[[], Projection]]:
    return {
        "quota": lambda: QuotaProjection(QuotaState(rate)),
        "keys": lambda: KeysProjection(KeyRegistry()),
        "billing": lambda: BillingProjection(),
        "refund": lambda: RefundProjection(),
    }


async def bare_insert(pool: asyncpg.Pool, n: int, batch: int) -> float:
    """The floor: 5 columns, one primary key, one unnest INSERT and one transaction per batch."""
    await pool.execute("""CREATE TABLE IF NOT EXISTS bench_rows (event_id text PRIMARY KEY, account_id text,
                          occurred_at timestamptz, flows_micros bigint, model text)""")
    now = datetime.now(UTC)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for start in range(0, n, batch):
            ids = [uuid.uuid4().hex for _ in range(batch)]
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO bench_rows SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                       $4::bigint[], $5::text[]) ON CONFLICT DO NOTHING""",
                    ids, [f"acc_{i % 1000}" for i in range(batch)], [now] * batch, [start] * batch,
                    ["deepseek/deepseek-chat"] * batch,
                )  # fmt: skip
    elapsed = time.perf_counter() - started
    await pool.execute("DROP TABLE bench_rows")
    return n / elapsed


async def apply_rates(
    database_url: str, events: int, accounts: int, batch: int, profile: bool
) -> tuple[float, dict[str, tuple[float, float]], str]:
    """The bare insert's events/s, each projection's (events/s, Python share of wall time), and the profile."""
    start = datetime.now(UTC) - timedelta(days=1)
    setup = [encode(e) for e in account_events(accounts, start)]
    usage = [encode(e) for e in usage_events(events, accounts, start + timedelta(hours=2), per_second=15_000)]
    batches = [usage[i : i + batch] for i in range(0, len(usage), batch)]
    rate = load_catalog().default_usd_per_flow
    pool = await create_pool(database_url, min_size=1, max_size=2)
    rates: dict[str, tuple[float, float]] = {}
    profiled = ""
    try:
        floor = await bare_insert(pool, events, batch)
        for name, make in projections(rate).items():
            driver = Driver(pool, make())
            for i in range(0, len(setup), 1000):
                await driver.apply(setup[i : i + 1000])
            profiler = cProfile.Profile() if profile and name == "quota" else None
            cpu, started = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            for wire in batches:
                await driver.apply(wire)
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - started
            rates[name] = (events / wall, (time.process_time() - cpu) / wall)
            if profiler:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                if os.environ.get("BENCH_PROFILE_CALLERS"):
                    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_callers(
                        os.environ["BENCH_PROFILE_CALLERS"]
                    )
                profiled = out.getvalue()
    finally:
        await pool.close()
    return floor, rates, profiled


def report_apply(events: int, batch: int, floor: float, rates: dict[str, tuple[float, float]]) -> None:
    print(f"\nprojection apply, {events:,} usage events in batches of {batch:,}, one projection at a time:")
    print(f"  {'bare asyncpg batched insert':<28} {floor:>9,.0f} events/s")
    for name, (eps, python) in rates.items():
        print(f"  {name + ' apply':<28} {eps:>9,.0f} events/s  {eps / floor:>4.0%} of bare insert"
              f"  (Python {python:.0%} of the wall time; target >= 50%)")  # fmt: skip


async def run(args: argparse.Namespace, work: Path, database_url: str) -> None:
    print(f"\nprojections bench: {os.cpu_count()} cores (shared: other processes may run meanwhile)")
    floor, rates, profiled = await apply_rates(database_url, args.events, args.accounts, args.batch, args.profile)
    report_apply(args.events, args.batch, floor, rates)
    if profiled:
        print("\ncProfile of quota's apply (by own time):")
        print(profiled)


def main() -> None:
    """`python -m bench.projections`: this part alone, on a Postgres of its own."""
    import tempfile

    from libs.db import migrate_async
    from libs.localservers import LocalPostgres
    from libs.setup import migration_dirs

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    add_arguments(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flowplan-bench-"))
    os.chmod(work, 0o755)
    postgres = LocalPostgres(work / "postgres", durable=True)
    postgres.start()

    async def go() -> None:
        for folder in migration_dirs():
            await migrate_async(postgres.url, folder)
        await run(args, work, postgres.url)

    try:
        asyncio.run(go())
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
