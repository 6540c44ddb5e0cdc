"""Projections part of `python -m bench` (`--part projections`): how fast each projection that reads
every usage event (quota, keys, billing, refund) applies batches, beside the bare batched insert
measured in the same run on the same Postgres.

Two measurements:
  * apply: each projection's `apply` driven as the runner drives it (decode each event from its
    wire bytes, one transaction per batch with the checkpoint, the after-commit step), against a
    real Postgres and nothing else, one projection at a time: events/s, and what does not depend on
    how loaded the machine is: CPU per event of the Python side (the bench process) and of Postgres
    (its processes, from /proc), and the statements each batch sends. The bare insert is measured
    the same way. `--profile` prints cProfile's top items of quota's apply.
  * live (`--live`): the services themselves, each following the log while ingress takes usage flat
    out, then while the bench publishes usage straight to the stream paced at each of --stream-rates
    (ingress tops out below 15,000/s on 2 cores, so through it the paced target could not be tested):
    each projection's events/s, lag (p50/p99) and CPU per event, with all four services, nats-server,
    Postgres and ingress sharing the machine's cores.

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
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import asyncpg
import msgspec
import nats

from bench.ingest import post_batches
from bench.procstat import cpu_of, cpu_seconds, pct
from libs.db import create_pool, ensure_database, migrate_async
from libs.eventlog.checkpoints import save_checkpoint
from libs.eventlog.projection import AfterCommit, Applied, Projection
from libs.eventlog.publisher import EventPublisher
from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from libs.settings import Settings, settings_environ
from libs.setup import migration_dirs
from proto.v1 import AccountCreated, KeyCreated, PlanChanged, UsageRecorded, decode_event, encode
from proto.v1.events import Event
from services.billing.projection import BillingProjection
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota.projection import QuotaProjection
from services.quota.state import QuotaState
from services.refund.projection import RefundProjection
from tests.stack import ServiceProcess

MODELS = ("deepseek/deepseek-chat", "openai/gpt-5-mini", "anthropic/claude-sonnet-4.5", "qwen/qwen3-coder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --profile (bench/gateway.py's: py-spy of gateway and quota there) also has this part cProfile quota's apply
    parser.add_argument("--live", action="store_true", help="projections: also the services following ingest")
    parser.add_argument("--trickle", action="store_true",
                        help="projections: the services following single-event posts at --trickle-rate (the "
                             "gateway's pace), once per --lingers value: CPU per event and lag")  # fmt: skip
    parser.add_argument("--trickle-rate", type=float, default=500.0, help="events/s, one event per POST")
    parser.add_argument("--trickle-seconds", type=float, default=20.0)
    parser.add_argument("--lingers", default="0.02,0.1", help="FLOWPLAN_PROJECTION_LINGER_S values, comma-separated")
    parser.add_argument(
        "--stream-rates",
        default="15000,8000",
        help="projections --live: usage published straight to the stream at these events/s",
    )
    parser.add_argument("--stream-seconds", type=float, default=10.0, help="the length of each of those runs")


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
    n: int,
    n_accounts: int,
    start: datetime,
    per_second: float,
    late: float = 0.03,
    seed: int = 1,
    ids: Sequence[tuple[str, str]] = (),
) -> list[UsageRecorded]:
    """n calls from `start` on at `per_second` of event time, over the accounts; `late` of them late by
    up to an hour. `ids`: (account id, key id) by account, else those of account_events()."""
    rng, catalog = random.Random(seed), load_catalog()
    ids = ids or [(f"acc_pb{i:07d}", f"key_pb{i:07d}") for i in range(n_accounts)]
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
                event_id=f"gw_{uuid.uuid4().hex}", account_id=ids[account][0], occurred_at=at, model=model.id,
                input_tokens=tokens[0], output_tokens=tokens[1], billing_mode="subscription",
                key_id=ids[account][1], usd_cost_micros=price.usd_cost_micros, flows_micros=price.flows_micros,
                usd_per_flow=str(rate), multiplier="1", source="gateway", reservation_id=uuid.uuid4().hex,
                client_hash=f"c{account % 97:031x}", agent_hash="a" * 32,
            )
        )  # fmt: skip
    return events


class Driver:
    """Applies batches to a projection as the runner does: decode, one transaction with the checkpoint,
    then the after-commit step. Counts the statements sent (BEGIN, the checkpoint and COMMIT included)."""

    def __init__(self, pool: asyncpg.Pool, projection: Projection) -> None:
        self.pool, self.projection, self.seq = pool, projection, 0
        self.statements = 0

    def _count(self, _query: object) -> None:
        self.statements += 1

    async def apply(self, wire: Sequence[bytes]) -> None:
        batch = []
        for data in wire:
            self.seq += 1
            batch.append(Applied(self.seq, decode_event(data)))
        after: AfterCommit | None = None
        async with self.pool.acquire() as conn:
            conn.add_query_logger(self._count)
            try:
                async with conn.transaction():
                    after = await self.projection.apply(conn, batch)
                    await save_checkpoint(conn, self.projection, 0, self.seq)
            finally:
                conn.remove_query_logger(self._count)
        if after is not None:
            after()


class Rate(NamedTuple):
    """One apply measurement: events/s (wall), CPU µs per event of the Python side and of Postgres,
    statements per batch."""

    eps: float
    python_us: float
    postgres_us: float
    statements: float

    @property
    def cpu_us(self) -> float:
        return self.python_us + self.postgres_us


def projections(rate: Fraction) -> dict[str, Callable[[], Projection]]:
    return {
        "quota": lambda: QuotaProjection(QuotaState(rate)),
        "keys": lambda: KeysProjection(KeyRegistry()),
        "billing": lambda: BillingProjection(),
        "refund": lambda: RefundProjection(),
    }


async def bare_insert(pool: asyncpg.Pool, n: int, batch: int, postgres: Callable[[], float]) -> Rate:
    """The floor: 5 columns, one primary key, one unnest INSERT and one transaction per batch."""
    await pool.execute("""CREATE TABLE IF NOT EXISTS bench_rows (event_id text PRIMARY KEY, account_id text,
                          occurred_at timestamptz, flows_micros bigint, model text)""")
    now = datetime.now(UTC)
    started, cpu, pg = time.perf_counter(), time.process_time(), postgres()
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
    elapsed, cpu, pg = time.perf_counter() - started, time.process_time() - cpu, postgres() - pg
    await pool.execute("DROP TABLE bench_rows")
    return Rate(n / elapsed, cpu / n * 1e6, pg / n * 1e6, 1.0)


async def apply_rates(
    database_url: str, events: int, accounts: int, batch: int, profile: bool, postgres_pids: Callable[[], list[int]]
) -> tuple[Rate, dict[str, Rate], str]:
    """The bare insert's rate, each projection's, and the profile. `postgres_pids`: the bench's
    Postgres processes (nothing else uses that server meanwhile)."""
    start = datetime.now(UTC) - timedelta(days=1)
    setup = [encode(e) for e in account_events(accounts, start)]
    usage = [encode(e) for e in usage_events(events, accounts, start + timedelta(hours=2), per_second=15_000)]
    batches = [usage[i : i + batch] for i in range(0, len(usage), batch)]
    rate = load_catalog().default_usd_per_flow
    pool = await create_pool(database_url, min_size=1, max_size=1)
    rates: dict[str, Rate] = {}
    profiled = ""

    def postgres() -> float:
        return sum(cpu_seconds(pid) for pid in postgres_pids())

    try:
        floor = await bare_insert(pool, events, batch, postgres)
        for name, make in projections(rate).items():
            driver = Driver(pool, make())
            for i in range(0, len(setup), 1000):
                await driver.apply(setup[i : i + 1000])
            cpu, started, pg, driver.statements = time.process_time(), time.perf_counter(), postgres(), 0
            for wire in batches:
                await driver.apply(wire)
            wall, cpu, pg = time.perf_counter() - started, time.process_time() - cpu, postgres() - pg
            rates[name] = Rate(events / wall, cpu / events * 1e6, pg / events * 1e6, driver.statements / len(batches))
            if profile and name == "quota":  # a pass of its own: the profiler slows what it watches
                again = [encode(msgspec.structs.replace(decode_event(b), event_id=uuid.uuid4().hex)) for b in usage]
                profiler = cProfile.Profile()
                profiler.enable()
                for i in range(0, len(again), batch):
                    await driver.apply(again[i : i + batch])
                profiler.disable()
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


def report_apply(events: int, batch: int, floor: Rate, rates: dict[str, Rate]) -> None:
    print(
        f"\nprojection apply, {events:,} usage events in batches of {batch:,}, one projection at a time; "
        "CPU in µs per event (/proc), statements per batch (BEGIN, the checkpoint and COMMIT included):"
    )
    print(
        f"  {'':<28} {'events/s':>9} {'x bare':>7} {'Python':>7} {'Postgres':>9} {'CPU':>6} {'x bare CPU':>11}"
        f" {'statements':>11}"
    )
    for name, r in {"bare batched insert": floor, **{f"{k} apply": v for k, v in rates.items()}}.items():
        print(
            f"  {name:<28} {r.eps:>9,.0f} {r.eps / floor.eps:>7.0%} {r.python_us:>7.1f} {r.postgres_us:>9.1f}"
            f" {r.cpu_us:>6.1f} {floor.cpu_us / r.cpu_us:>11.0%} {r.statements:>11.1f}"
        )
    print(
        "  x bare: events/s as a share of the bare insert's (wall time: the machine's load moves it); x bare CPU:"
        " the bare insert's CPU per row over the projection's per event (target for both: >= 50%)"
    )


LIVE = ("quota", "keys", "billing", "refund")
"""The projections that read every usage event, each in its own service."""


async def create_accounts(base: str, token: str, n: int) -> list[tuple[str, str]]:
    """(account id, key id) of n new accounts, through the admin API."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def one(i: int) -> tuple[str, str]:
            for attempt in range(10):  # a service just started, on a loaded machine, may answer 503 at first
                async with session.post(f"{base}/admin/v1/accounts", json={"name": f"bench-{i}"}) as r:
                    body = await r.json()
                    if r.status < 300 or attempt == 9:
                        break
                await asyncio.sleep(1)
            assert "account_id" in body, body
            return str(body["account_id"]), str(body["key_id"])

        made: list[tuple[str, str]] = []
        for start in range(0, n, 50):
            made += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
        return made


def through_ingress(
    base: str, settings: Settings, accounts: list[tuple[str, str]], n: int, batch: int, rate: float | None
) -> Callable[[], Awaitable[float]]:
    """n events posted to ingress in bodies of `batch` (4 clients flat out, or paced at `rate` events/s)."""
    now = datetime.now(UTC).isoformat()
    bodies = [
        msgspec.json.encode({"events": [
            {"event_id": uuid.uuid4().hex, "account_id": account, "key_id": key, "model": MODELS[i % len(MODELS)],
             "input_tokens": 1000 + i, "output_tokens": 200, "billing_mode": "subscription", "occurred_at": now}
            for i in range(batch)
            for account, key in [accounts[(b * batch + i) % len(accounts)]]
        ]})
        for b in range(n // batch)
    ]  # fmt: skip
    return lambda: post_batches(base, settings.ingest_token, bodies, events_per_body=batch, rate=rate, clients=4)


def to_stream(
    settings: Settings, accounts: list[tuple[str, str]], n: int, rate: float
) -> Callable[[], Awaitable[float]]:
    """n events published straight to the stream (as the gateway publishes usage), paced at `rate`
    events/s: a chunk every 10 ms, each chunk's publish not waiting for the one before."""
    usage = usage_events(n, len(accounts), datetime.now(UTC), per_second=rate, ids=accounts)
    chunk = max(1, round(rate / 100))

    async def publish() -> float:
        nc = await nats.connect(settings.nats_url)
        # No limit but the pace, and time for the stream to store what a busy machine holds up
        publisher = EventPublisher(nc, settings.stream, timeout_s=60, max_in_flight=1000 * (n // chunk + 1))
        await publisher.start()
        started, sent = time.perf_counter(), []
        for i in range(0, n, chunk):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(asyncio.create_task(publisher.publish(usage[i : i + chunk])))
        await asyncio.gather(*sent)
        elapsed = time.perf_counter() - started
        await nc.close()
        return elapsed

    return publish


async def follow(settings: Settings, n: int, ingest: Callable[[], Awaitable[float]]) -> dict[str, dict[str, float]]:
    """Ingest n events and follow each projection until it applied them all: its events/s (n / seconds
    from the start of ingest until applied) and its lag (from the time the stream held an event to
    the time the projection's checkpoints passed it)."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    pg = await asyncpg.connect(settings.database_url)
    start_seq = (await js.stream_info(settings.stream)).state.last_seq
    stream: list[tuple[float, int]] = []
    applied: dict[str, list[tuple[float, int]]] = {name: [] for name in LIVE}
    finished: dict[str, float] = {}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            stream.append((time.perf_counter(), (await js.stream_info(settings.stream)).state.last_seq))
            for name in LIVE:
                if name in finished:
                    continue
                seq = await pg.fetchval(f"SELECT min(last_seq) FROM {name}.checkpoints WHERE projection = $1", name)
                applied[name].append((time.perf_counter(), int(seq or 0)))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    ingest_s = await ingest()
    end_seq = (await js.stream_info(settings.stream)).state.last_seq
    while len(finished) < len(LIVE):
        consumers = await js.consumers_info(settings.stream)
        for name in LIVE:
            mine = [c for c in consumers if c.name.startswith(f"{name}-p")]
            if name not in finished and mine and all(c.num_pending + c.num_ack_pending == 0 for c in mine):
                finished[name] = time.perf_counter() - started
        await asyncio.sleep(0.02)
    done.set()
    await sampler
    await pg.close()
    await nc.close()
    result = {"ingest": {"eps": n / ingest_s}}
    for name in LIVE:
        lags = []
        for t_stored, seq in stream:
            if start_seq < seq <= end_seq:
                t_applied = next((t for t, at in applied[name] if at >= seq and t >= t_stored), None)
                if t_applied is not None:
                    lags.append(t_applied - t_stored)
        result[name] = {"eps": n / finished[name], "p50": pct(lags, 0.5), "p99": pct(lags, 0.99)}
    return result


async def live(
    args: argparse.Namespace, work: Path, settings: Settings, floor: Rate, servers: Callable[[], dict[str, list[int]]]
) -> None:
    """The four services following ingest, through ingress flat out and straight to the stream paced,
    with everything on this machine's cores."""

    env = {**settings_environ(settings), "FLOWPLAN_LOG_LEVEL": "WARNING"}
    services = [ServiceProcess(name, env, getattr(settings, f"{name}_port"), work) for name in ("ingress", *LIVE)]
    rates = [float(x) for x in str(args.stream_rates).split(",") if x.strip()]
    runs: list[tuple[str, int, dict[str, dict[str, float]], dict[str, float], float]] = []
    try:
        for service in services:
            service.start()
        base = f"http://127.0.0.1:{settings.ingress_port}"
        accounts = await create_accounts(base, settings.admin_token, args.accounts)
        groups = {s.name: [s.process.pid] for s in services if s.process} | servers() | {"bench": [os.getpid()]}
        ingests = [("through ingress, flat out", args.events,
                    through_ingress(base, settings, accounts, args.events, args.batch, None))]  # fmt: skip
        for rate in rates:
            n = int(rate * args.stream_seconds)
            ingests.append(
                (f"straight to the stream, paced at {rate:,.0f}/s", n, to_stream(settings, accounts, n, rate))
            )
        for label, n, ingest in ingests:
            before, wall = cpu_of(groups), time.perf_counter()
            result = await follow(settings, n, ingest)
            after, wall = cpu_of(groups), time.perf_counter() - wall
            runs.append((label, n, result, {name: after[name] - before[name] for name in groups}, wall))
    finally:
        for service in services:
            service.stop()
    print(f"\nlive projections (ingress, {', '.join(LIVE)}, nats-server and Postgres on the same cores):")
    for label, n, result, cpu, wall in runs:
        print(f"  {label}: {n:,} events, ingest {result['ingest']['eps']:,.0f} events/s")
        for name in LIVE:
            r = result[name]
            print(f"    {name:<8} {r['eps']:>8,.0f} events/s ({r['eps'] / floor.eps:>4.0%} of bare insert)"
                  f"  lag p50 {r['p50'] * 1000:>6,.0f} ms, p99 {r['p99'] * 1000:>6,.0f} ms")  # fmt: skip
        print(f"    cores used (of {os.cpu_count()}): " + ", ".join(f"{k} {v / wall:.2f}" for k, v in cpu.items()))
        print("    CPU per event: " + ", ".join(f"{k} {v / n * 1e6:.0f} µs" for k, v in cpu.items()))
    print("  targets: paced lag p99 < 1 s; flat out >= 50% of the bare insert")


async def run(
    args: argparse.Namespace, work: Path, settings: Settings, servers: Callable[[], dict[str, list[int]]]
) -> None:
    """`servers`: the pids of nats-server and Postgres by name, as the core part counts their CPU."""
    print(f"\nprojections bench: {os.cpu_count()} cores (shared: other processes may run meanwhile)")
    apply_url = f"{settings.database_url.rsplit('/', 1)[0]}/flowplan_bench_apply"  # not the live services' one
    ensure_database(apply_url)
    for folder in migration_dirs():
        await migrate_async(apply_url, folder)
    if args.trickle and not args.live and args.events == 0:  # the trickle alone: `--trickle --events 0`
        await trickle(args, work, settings, servers)
        return
    floor, rates, profiled = await apply_rates(
        apply_url, args.events, args.accounts, args.batch, args.profile, lambda: servers()["postgres"]
    )
    report_apply(args.events, args.batch, floor, rates)
    if profiled:
        print("\ncProfile of quota's apply (by own time):")
        print(profiled)
    if args.live:
        await live(args, work, settings, floor, servers)
    if args.trickle:
        await trickle(args, work, settings, servers)


async def trickle(
    args: argparse.Namespace, work: Path, settings: Settings, servers: Callable[[], dict[str, list[int]]]
) -> None:
    """The four services following a trickle: one usage event per POST at --trickle-rate, as a
    gateway's calls arrive, rather than ingest's batches. Each service's CPU per event and lag, once
    per projection linger (the services restarted with it, on the same database and log): at this
    pace a projection's batches are as big as the linger lets them grow, and its CPU per event is
    mostly the per-batch cost (fetch, transaction, checkpoint, ack) over the events in a batch."""
    lingers = [float(x) for x in str(args.lingers).split(",") if x.strip()]
    n = int(args.trickle_rate * args.trickle_seconds)
    base = f"http://127.0.0.1:{settings.ingress_port}"
    accounts: list[tuple[str, str]] = []
    rows = []
    for linger in lingers:
        env = {**settings_environ(settings), "FLOWPLAN_LOG_LEVEL": "WARNING",
               "FLOWPLAN_PROJECTION_LINGER_S": str(linger)}  # fmt: skip
        services = [ServiceProcess(name, env, getattr(settings, f"{name}_port"), work) for name in ("ingress", *LIVE)]
        try:
            for service in services:
                service.start()
            accounts = accounts or await create_accounts(base, settings.admin_token, args.accounts)
            await asyncio.sleep(2)  # the accounts applied everywhere before the measured events
            groups = {s.name: [s.process.pid] for s in services if s.process} | servers()
            before = cpu_of(groups)
            result = await follow(settings, n, through_ingress(base, settings, accounts, n, 1, args.trickle_rate))
            after = cpu_of(groups)
        finally:
            for service in services:
                service.stop()
        rows.append((linger, result, {name: (after[name] - before[name]) / n * 1e6 for name in groups}))
    print(f"\ntrickle: {n:,} usage events, one per POST at {args.trickle_rate:,.0f}/s, the services restarted "
          "for each projection linger; CPU in µs per event (/proc), lag from stored to applied")  # fmt: skip
    for linger, result, cpu in rows:
        print(
            f"  linger {linger * 1000:>4.0f} ms: ingest {result['ingest']['eps']:,.0f} events/s; "
            + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        )
        for name in LIVE:
            r = result[name]
            print(f"    {name:<8} lag p50 {r['p50'] * 1000:>6,.0f} ms, p99 {r['p99'] * 1000:>6,.0f} ms")
