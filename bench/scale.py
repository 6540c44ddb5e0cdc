"""Scale part of `make bench` (`python -m bench --part scale`): one gateway against two, one quota
against two.

The same closed-loop load of admitted, metered chat completions (non-streamed and streamed) goes
to one gateway process, then to two gateway processes sharing one keys, one quota and one
simulator: for two, the load is split evenly between two load generator processes, one per
gateway (what a round-robin balancer with kept-alive connections does). Each cell prints the
calls/s and the CPU each process used per call, read from /proc over the measured window, which
is what docs/capacity.md builds on. On a machine with 2 cores, two gateways are not expected to go
faster; the point is that nothing breaks and the CPU per call stays the same, so adding cores
adds calls.

Then a second quota instance starts: the two share the partitions (services/quota/partitions.py),
and the two load generators call with two accounts whose partitions belong to different quota
instances, so each quota admits half the calls. Each row says the quota CPU per call over both.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
from nats.aio.client import Client

from bench.gateway import GatewayStack, measure, settle
from bench.procstat import cpu_seconds
from libs.eventlog.subjects import partition_for
from libs.leases import BUCKET
from libs.localservers import free_port
from libs.settings import Settings
from tests.stack import ServiceProcess

MODES = ("non-stream", "stream")
Watch = dict[str, list[int]]
Servers = Callable[[], Watch]


PROCESSES = ("gateway", "quota", "keys", "simulator", "nats-server", "postgres")


async def keys_on_both_quotas(
    stack: GatewayStack, nc: Client, settings: Settings, quotas: list[ServiceProcess]
) -> list[str]:
    """Keys of two Pro accounts whose partitions are owned by different quota instances."""
    kv = await nc.jetstream().key_value(BUCKET)
    owner = {}
    for partition in range(settings.partitions):
        entry = await kv.get(f"owner.quota.{partition}")
        owner[partition] = (entry.value or b"").decode()
    found: dict[str, str] = {}
    for _ in range(20):
        account_id, key, _ = await stack.create_account(nc)
        found.setdefault(owner[partition_for(account_id, settings.partitions)], key)
        if len(found) == len(quotas):
            return list(found.values())
    raise RuntimeError(f"no accounts on both quota instances: {owner}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale-concurrency", type=int, default=32, help="clients in all, split over the gateways")
    parser.add_argument("--scale-events", type=int, default=30_000, help="usage events for the CPU per ingested event")


async def ingest_cell(
    stack: GatewayStack, nc: Client, settings: Settings, n: int, watch: Watch, servers: Servers
) -> dict[str, Any]:
    """n usage events in batches of 1,000 through POST /v1/usage (4 clients), until quota (and every
    other projection) applied them: the CPU each process used per event, over that whole time."""
    async with aiohttp.ClientSession() as session:
        accounts = [
            (await stack.admin(session, "/admin/v1/accounts", {"name": f"bench-ingest-{i}"}))["account_id"]
            for i in range(64)
        ]
    await settle(nc, settings)
    now = datetime.now(UTC).isoformat()
    event = {"model": "deepseek/deepseek-chat", "input_tokens": 1000, "output_tokens": 200}
    bodies = [
        msgspec.json.encode(
            {
                "events": [
                    {**event, "event_id": uuid.uuid4().hex, "account_id": accounts[(b + i) % len(accounts)],
                     "billing_mode": "subscription", "occurred_at": now}
                    for i in range(1000)
                ]
            }
        )
        for b in range(n // 1000)
    ]  # fmt: skip
    headers = {"Authorization": f"Bearer {settings.ingest_token}", "content-type": "application/json"}
    url = f"http://127.0.0.1:{stack.settings.ingress_port}/v1/usage"
    before = {pid: cpu_seconds(pid) for pids in watch.values() for pid in pids}
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client(k: int) -> None:
            for body in bodies[k::4]:
                async with session.post(url, data=body) as response:
                    assert response.status == 202, await response.text()

        await asyncio.gather(*(client(k) for k in range(4)))
    ingested = time.perf_counter() - started
    await settle(nc, settings)
    wall = time.perf_counter() - started
    if "postgres" in watch:  # the backends started since count from 0; those gone since are not counted
        watch["postgres"] = servers()["postgres"]
    used = {name: sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids) for name, pids in watch.items()}
    events = len(bodies) * 1000
    return {"events": events, "ingest_eps": events / ingested, "wall": wall, "us_per_event": {
        name: 1e6 * seconds / events for name, seconds in used.items()}}  # fmt: skip


async def cell(
    urls: list[str], keys: list[str], concurrency: int, stream: bool, seconds: float, warmup: float, watch: Watch
) -> dict[str, Any]:
    """The load split over the gateways, one load generator each (with its own key), measured over
    the same window; the first one also reads the CPU of every watched process."""
    share = concurrency // len(urls)
    runs = await asyncio.gather(
        *(measure(url, keys[i], share, stream, seconds, warmup, watch if i == 0 else {}) for i, url in enumerate(urls))
    )
    return {
        "rps": sum(r["rps"] for r in runs),
        "p50": max(r["p50"] for r in runs),
        "p99": max(r["p99"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "cpu": runs[0]["cpu"],
        "loadgen": sum(r["cpu"]["loadgen"] for r in runs),
    }


async def run(args: argparse.Namespace, work: Path, settings: Settings, servers: Servers) -> None:
    """`servers()` gives the pids of the bench's NATS and Postgres at the time it is called."""
    seconds, warmup, concurrency = args.gateway_seconds, args.gateway_warmup, args.scale_concurrency
    stack = GatewayStack(settings, work)
    port = free_port()
    gateway = stack.services["gateway"]
    second = ServiceProcess("gateway", {**gateway.env, "FLOWPLAN_GATEWAY_PORT": str(port)}, port, work)
    second.log_path = work / "gateway-2.log"
    started = [stack.services[name] for name in ("simulator", "keys", "quota", "billing", "ingress", "gateway")]
    nc = await nats.connect(settings.nats_url)
    results: dict[tuple[str, int, int], dict[str, Any]] = {}
    quota_port = free_port()
    quota = stack.services["quota"]
    second_quota = ServiceProcess("quota", {**quota.env, "FLOWPLAN_QUOTA_PORT": str(quota_port)}, quota_port, work)
    second_quota.log_path = work / "quota-2.log"
    try:
        for service in [*started, second]:
            service.start()
        account_id, key, _ = await stack.create_account(nc)
        settled = await settle(nc, settings)
        urls = [stack.urls["gateway"], f"http://127.0.0.1:{port}/v1/chat/completions"]
        watch = servers()  # after the services started: their Postgres backends included
        watch.update({name: [stack.pid(name)] for name in ("quota", "keys", "simulator")})
        for mode in MODES:
            for gateways in (1, 2):
                assert gateway.process is not None and second.process is not None
                cpu_of = {**watch, "gateway": [gateway.process.pid, second.process.pid][:gateways]}
                results[mode, gateways, 1] = await cell(
                    urls[:gateways], [key, key], concurrency, mode == "stream", seconds, warmup, cpu_of
                )
        second_quota.start()  # returns once it owns and answers for its share of the partitions
        keys = await keys_on_both_quotas(stack, nc, settings, [quota, second_quota])
        assert quota.process is not None and second_quota.process is not None
        watch["quota"] = [quota.process.pid, second_quota.process.pid]
        for mode in MODES:
            assert gateway.process is not None and second.process is not None
            cpu_of = {**watch, "gateway": [gateway.process.pid, second.process.pid]}
            results[mode, 2, 2] = await cell(urls, keys, concurrency, mode == "stream", seconds, warmup, cpu_of)
        shared = ("nats-server", "postgres", "quota", "keys")
        ingest_watch: Watch = {name: watch[name] for name in shared if name in watch}
        ingest_watch.update({name: [stack.pid(name)] for name in ("ingress", "billing")})
        ingest = await ingest_cell(stack, nc, settings, args.scale_events, ingest_watch, servers)
    finally:
        await nc.close()
        second.stop()
        second_quota.stop()
        for service in reversed(started):
            service.stop()
    print(
        f"\nflowplan scale bench: one gateway against two; {os.cpu_count()} cores (shared with whatever else runs "
        f"on this machine), Python {sys.version.split()[0]};\n  {concurrency} clients in all, {seconds:g} s per cell "
        f"after {warmup:g} s; one quota, keys and simulator; account {account_id} (settled in {settled:.1f} s).\n"
        "  CPU in milliseconds per admitted call, per process group (gateway = all gateway processes)."
    )
    header = f"{'mode':<11} {'gateways':>8} {'quotas':>6} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  "
    header += "  ".join(f"{name:>11}" for name in PROCESSES) + f"  {'load gen':>8}"
    print(header)
    for (mode, gateways, quotas), r in results.items():
        per_call = "  ".join(f"{1000 * r['cpu'].get(name, float('nan')) / r['rps']:>11.3f}" for name in PROCESSES)
        print(
            f"{mode:<11} {gateways:>8} {quotas:>6} {r['rps']:>8,.0f} {r['p50'] * 1000:>7.1f} {r['p99'] * 1000:>7.1f} "
            f"{r['errors']:>6}  {per_call}  {1000 * r['loadgen'] / r['rps']:>8.3f}"
        )
    for mode in MODES:
        one, two, both = results[mode, 1, 1], results[mode, 2, 1], results[mode, 2, 2]
        ratio = (two["cpu"]["gateway"] / two["rps"]) / (one["cpu"]["gateway"] / one["rps"])
        quota_ratio = (both["cpu"]["quota"] / both["rps"]) / (two["cpu"]["quota"] / two["rps"])
        print(
            f"{mode}: two gateways {two['rps'] / one['rps']:.2f}x the calls/s of one; gateway CPU per call "
            f"{ratio:.2f}x; two quotas {both['rps'] / two['rps']:.2f}x the calls/s of one, "
            f"quota CPU per call {quota_ratio:.2f}x"
        )
    print(
        f"\ningest: {ingest['events']:,} usage events in batches of 1,000 (4 clients): {ingest['ingest_eps']:,.0f} "
        f"events/s stored, every projection caught up after {ingest['wall']:.1f} s.\n  CPU in microseconds per "
        "ingested event: " + ", ".join(f"{name} {us:.1f}" for name, us in ingest["us_per_event"].items())
    )
