"""Replay part of `python -m bench`: how fast `flowplan replay --projection all --verify` rebuilds.

Publishes --replay-events realistic events straight to the stream (accounts with a key, a
plan for a third of them, PAYG top-ups, then usage over many accounts: priced, spread over
the last week, a few percent late, some PAYG), starts ingress, quota, keys, billing and
refund, waits until their live projections have applied everything, then replays all five at
once (each in its own service) and verifies each rebuild against the live projection; then each
projection again alone, one after the other, with the whole machine for it.

events/s = events read / each rebuild's seconds; the verification and the swap are timed apart.
The cores each process used show the limit: all at once, over the whole replay; alone, as CPU
per event of the rebuild (up to its end, verification excluded) of the service, Postgres and
nats-server. The floor,
measured first on the same Postgres: the bare batched insert (bench/projections.py) in batches of a
rebuild's size; each rebuild's events/s is given as a share of its rows/s.
"""

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import nats
import nats.errors
from rich.console import Console

from bench.gateway import write_bench_plans
from bench.procstat import cpu_seconds
from bench.projections import bare_insert
from libs.db import create_pool
from libs.eventlog.publisher import EventPublisher
from libs.localservers import wait_for_port
from libs.ops import connected
from libs.ops.replay import discover, replay
from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from libs.replay.rebuild import READ_BATCH
from libs.settings import Settings, settings_environ
from proto.v1 import (
    AccountCreated,
    BalanceToppedUp,
    KeyCreated,
    PaymentRecorded,
    PlanChanged,
    ReplayProgress,
    StartReplay,
    UsageRecorded,
)
from proto.v1.events import Event
from tests.stack import ServiceProcess, eventually

SERVICES = ("ingress", "quota", "keys", "billing", "refund")
MODELS = ("deepseek/deepseek-chat", "openai/gpt-5-mini", "anthropic/claude-sonnet-4.5", "qwen/qwen3-coder")


def account_events(n_accounts: int, now: datetime) -> list[Event]:
    events: list[Event] = []
    for i in range(n_accounts):
        account, created = f"acc_bench{i:06d}", now - timedelta(days=20)
        events.append(AccountCreated(event_id=f"ac-{i}", account_id=account, occurred_at=created, name=f"bench {i}"))
        key = KeyCreated(
            event_id=f"kc-{i}", account_id=account, occurred_at=created, key_id=f"key_bench{i:06d}",
            name="default", kind="subscription", key_hash=uuid.uuid4().hex * 2, prefix="sk-ss-v1-", last4="abcd",
        )  # fmt: skip
        events.append(key)
        if i % 3 == 0:
            paid = now - timedelta(days=10)
            events.append(PaymentRecorded(event_id=f"pay-{i}", account_id=account, occurred_at=paid,
                                          payment_ref=f"ref-{i}", plan="pro", amount_micros=20_000_000))  # fmt: skip
            events.append(PlanChanged(event_id=f"plan-{i}", account_id=account, occurred_at=paid, plan="pro",
                                      previous_plan="free", period_anchor=paid, reason="payment",
                                      paid_until=paid + timedelta(days=30)))  # fmt: skip
        if i % 5 == 0:
            events.append(BalanceToppedUp(event_id=f"top-{i}", account_id=account, occurred_at=created,
                                          amount_micros=50_000_000, topup_ref=f"top-{i}"))  # fmt: skip
    return events


def usage_events(n: int, n_accounts: int, now: datetime, seed: int = 1) -> list[Event]:
    rng, catalog = random.Random(seed), load_catalog()
    rate = catalog.default_usd_per_flow
    start = now - timedelta(days=7)
    events: list[Event] = []
    for i in range(n):
        account = rng.randrange(n_accounts)
        model = catalog.models[MODELS[i % len(MODELS)]]
        at = start + timedelta(days=7) * i / n
        if rng.random() < 0.03:  # late: posted hours after it happened
            at -= timedelta(hours=rng.uniform(0, 30))
        tokens = {"input_tokens": rng.randint(100, 8000), "output_tokens": rng.randint(10, 2000)}
        price = price_call(model, **tokens, usd_per_flow=rate, multiplier=1)  # type: ignore[arg-type]
        call = UsageRecorded(
            event_id=f"u-{i}", account_id=f"acc_bench{account:06d}", occurred_at=at, model=model.id, **tokens,
            billing_mode="payg" if account % 5 == 0 and rng.random() < 0.2 else "subscription",
            key_id=f"key_bench{account:06d}", usd_cost_micros=price.usd_cost_micros,
            flows_micros=price.flows_micros, usd_per_flow=str(rate), multiplier="1", source="gateway",
        )  # fmt: skip
        events.append(call)
    return events


async def publish(settings: Settings, events: list[Event]) -> float:
    nc = await nats.connect(settings.nats_url)
    publisher = EventPublisher(nc, settings.stream)
    await publisher.start()
    started = time.perf_counter()
    for chunk in range(0, len(events), 20_000):
        await asyncio.gather(*(publisher.publish(events[s : s + 1000]) for s in range(chunk, chunk + 20_000, 1000)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return len(events) / elapsed


async def answering(settings: Settings, projection: str) -> bool:
    """Whether the projection's service answers for replays (it may be busy reloading after a swap)."""
    async with connected(settings) as nc:
        return projection in await discover(nc)


async def settled(settings: Settings) -> bool:
    nc = await nats.connect(settings.nats_url)
    try:
        consumers = await nc.jetstream().consumers_info(settings.stream)
        names = {c.name.rsplit("-p", 1)[0] for c in consumers}
        return names >= set(SERVICES) and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers)
    except nats.errors.TimeoutError:  # a busy server: ask again
        return False
    finally:
        await nc.close()


Pids = dict[str, list[int]]


class CpuSampler:
    """CPU seconds per group of processes over a stretch of time, sampled four times a second, so that
    processes that come and go meanwhile (the rebuilds' Postgres backends) are counted too."""

    def __init__(self, groups: Callable[[], Pids]) -> None:
        self._groups = groups
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._group_of: dict[int, str] = {}
        self._since = time.perf_counter()
        self._history: list[tuple[float, dict[str, float]]] = []

    def sample(self, baseline: bool = False) -> None:
        for group, pids in self._groups().items():
            for pid in pids:
                used = cpu_seconds(pid)
                self._group_of[pid] = group
                self._first.setdefault(pid, used if baseline else 0.0)
                self._last[pid] = max(self._last.get(pid, 0.0), used)
        self._history.append((time.perf_counter() - self._since, self.seconds()))

    async def follow(self, done: asyncio.Event) -> None:
        self._since = time.perf_counter()
        self.sample(baseline=True)
        while not done.is_set():
            await asyncio.sleep(0.25)
            self.sample()

    def seconds(self, until: float | None = None) -> dict[str, float]:
        """CPU seconds per group since the first sample: up to the last sample at most `until`
        seconds after it, or all of them."""
        if until is not None:
            return next((used for at, used in reversed(self._history) if at <= until), {})
        used: dict[str, float] = {}
        for pid, group in self._group_of.items():
            used[group] = used.get(group, 0.0) + self._last[pid] - self._first[pid]
        return used

    def cores(self, wall: float) -> dict[str, float]:
        return {group: seconds / wall for group, seconds in self.seconds().items()}


class Alone(NamedTuple):
    outcome: ReplayProgress
    cpu: dict[str, float]
    """CPU seconds per group (the service, postgres, nats-server) during the rebuild."""


async def replay_sampled(settings: Settings, projection: str, servers: Callable[[], Pids], processes: Pids) -> tuple[
    list[ReplayProgress], CpuSampler, float]:  # fmt: skip
    """`replay --projection <projection> --verify` with the CPU of the servers and `processes` sampled:
    the outcomes, the samples and the wall seconds."""
    sampler = CpuSampler(lambda: {**servers(), **processes})
    done = asyncio.Event()
    following = asyncio.create_task(sampler.follow(done))
    started = time.perf_counter()
    try:
        outcomes = await replay(settings, projection, StartReplay(verify=True), Console(stderr=True))  # a bar each
    finally:
        done.set()
        await following
    return outcomes, sampler, time.perf_counter() - started


async def run(
    events: int,
    accounts: int,
    work: Path,
    settings: Settings,
    servers: Callable[[], Pids],
) -> None:
    now = datetime.now(UTC)
    log = account_events(accounts, now)
    log += usage_events(events - len(log), accounts, now)
    print(f"\nreplay bench: {len(log):,} events ({accounts:,} accounts), {os.cpu_count()} cores")
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        floor = await bare_insert(pool, 200_000, READ_BATCH, lambda: sum(map(cpu_seconds, servers()["postgres"])))
    finally:
        await pool.close()
    publish_eps = await publish(settings, log)
    env = {**settings_environ(settings), "FLOWPLAN_LOG_LEVEL": "WARNING", "FLOWPLAN_PROJECTION_BATCH": "5000",
           "FLOWPLAN_PLANS_PATH": str(write_bench_plans(work / "bench-plans.json"))}  # fmt: skip
    services = [ServiceProcess(name, env, getattr(settings, f"{name}_port"), work) for name in SERVICES]
    try:
        waited = time.perf_counter()
        for service in services:  # with a long log, a service may apply it before it listens (quota does)
            service.start(wait=False)
        for service in services:
            await asyncio.to_thread(wait_for_port, service.port, timeout=3600, process=service.process)
        await eventually(lambda: settled(settings), within=3600, interval=1)
        live_s = time.perf_counter() - waited
        pids = {s.name: [s.process.pid] for s in services if s.process}
        outcomes, sampler, wall = await replay_sampled(
            settings, "all", servers, {**pids, "bench client": [os.getpid()]}
        )
        report(len(log), publish_eps, live_s, wall, outcomes, sampler.cores(wall), floor.eps)
        alone: dict[str, Alone] = {}
        for o in outcomes:  # each again, alone; its log and live tables are as they were
            await eventually(partial(answering, settings, o.projection), within=600, interval=1)
            [outcome], single, _ = await replay_sampled(
                settings, o.projection, servers, {"service": pids[o.projection]}
            )
            alone[o.projection] = Alone(outcome, single.seconds(until=outcome.rebuild_seconds))
    finally:
        for service in services:
            service.stop()
    report_alone(outcomes, alone)


def report(
    n: int,
    publish_eps: float,
    live_s: float,
    wall: float,
    outcomes: list[ReplayProgress],
    cores: dict[str, float],
    floor_eps: float,
) -> None:
    rebuild = max(o.rebuild_seconds for o in outcomes)
    print(f"the floor: bare batched insert, {READ_BATCH:,} rows a transaction, {floor_eps:,.0f} rows/s (same Postgres)")
    print(f"published {n:,} events at {publish_eps:,.0f}/s; the live projections took {live_s:,.0f} s to apply them")
    if any(o.phase == "failed" for o in outcomes):
        print(f"replay --projection all --verify FAILED after {wall:,.1f} s")
    else:
        print(f"replay --projection all --verify: {wall:,.1f} s in all; rebuilds {rebuild:,.1f} s "
              f"= {n / rebuild:,.0f} events/s (target >= 50,000)")  # fmt: skip
    for o in outcomes:
        print(f"  {o.projection:<8} read {o.read:>9,} in {o.rebuild_seconds or o.seconds:6.1f} s = "
              f"{rate(o):>8,.0f} events/s ({rate(o) / floor_eps:.0%} of the floor); "
              f"verify {o.verify_seconds:5.1f} s, {verdict(o)}; "
              f"live paused {o.paused_ms:,.0f} ms; {'swapped' if o.swapped else 'NOT swapped'}"
              f"{'; ' + o.error if o.error else ''}")  # fmt: skip
    print("  cores used during the replay: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))


def rate(o: ReplayProgress) -> float:
    """Events read per second of the rebuild; of the time it ran, for one that failed before its end."""
    return o.read / (o.rebuild_seconds or o.seconds or 1e-9)


def verdict(o: ReplayProgress) -> str:
    if not o.verified:
        return "not verified"
    return f"DIFFERENT ({len(o.differences)} tables)" if o.differences else "identical"


def report_alone(outcomes: list[ReplayProgress], alone: dict[str, Alone]) -> None:
    print("each projection alone, then all at once (events/s); CPU µs per event of the rebuild alone:")
    print(f"  {'projection':<10} {'alone':>8} {'all':>8} {'service':>8} {'postgres':>8} {'nats':>8}  verify alone")
    for o in outcomes:
        one = alone[o.projection]
        per_event = {group: seconds / max(one.outcome.read, 1) * 1e6 for group, seconds in one.cpu.items()}
        print(f"  {o.projection:<10} {rate(one.outcome):>8,.0f} "
              f"{rate(o):>8,.0f} {per_event.get('service', 0):>8.1f} "
              f"{per_event.get('postgres', 0):>8.1f} {per_event.get('nats-server', 0):>8.1f}  {verdict(one.outcome)}"
              f"{'' if one.outcome.swapped else ', NOT swapped'}{one.outcome.error or ''}")  # fmt: skip
