"""Benchmark of the platform core, in one run on this machine (not a timed test).

Measures, side by side:
  * bare JetStream async publish (nats-py, Nats-Msg-Id set, file storage): the floor of ingest
  * bare asyncpg batched INSERT (unnest, one transaction per 1,000 rows): the floor of projection
  * ingest: batched POST /v1/usage until JetStream acked, events/s
  * projection: events/s applied to Postgres while ingest runs, and its lag (p50/p99)
  * quota.check round trips: one at a time, paced at 2,000 and 5,000 checks/s beside the floor of the same
    client against an echo responder, and the closed-loop maximum (bench/paced.py)

Every server is started here, on free ports, with durable settings (fsync on).
`--part gateway` (or `all`, the default) also measures the gateway: see bench/gateway.py.
`--part replay` measures `flowplan replay --projection all --verify` over 1,000,000 events: see bench/replay.py.
`--part scale` measures one gateway against two, and the CPU per call of each process: see bench/scale.py.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import nats
from nats.js import api

from bench import gateway as bench_gateway
from bench import memory as bench_memory
from bench import projections as bench_projections
from bench import replay as bench_replay
from bench import scale as bench_scale
from bench import work_dir
from bench.gateway import postgres_pids
from bench.ingest import post_batches
from bench.procstat import cpu_of, pct
from libs.localservers import LocalNats, LocalPostgres, free_port
from libs.settings import Settings, load_settings, settings_environ
from libs.setup import set_up
from proto.v1 import subjects
from tests.stack import ServiceProcess

CHECK_TIMEOUT_S = 5.0


async def bare_publish(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await js.add_stream(
        api.StreamConfig(
            name="BENCH",
            subjects=["bench.>"],
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=600,
        )
    )
    payload = b"x" * 420  # about the size of an encoded UsageRecorded
    started = time.perf_counter()
    futures = [
        await js.publish_async(f"bench.{i % 1000}.UsageRecorded", payload, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        for i in range(n)
    ]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH")
    await nc.close()
    return n / elapsed


async def bare_insert(database_url: str, n: int, batch: int = 1000) -> float:
    conn = await asyncpg.connect(database_url)
    await conn.execute("""CREATE TABLE bench_rows (event_id text PRIMARY KEY, account_id text,
                          occurred_at timestamptz, flows_micros bigint, model text)""")
    now = datetime.now(UTC)
    started = time.perf_counter()
    for start in range(0, n, batch):
        ids = [uuid.uuid4().hex for _ in range(batch)]
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO bench_rows SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                   $4::bigint[], $5::text[]) ON CONFLICT DO NOTHING""",
                ids,
                [f"acc_{i % 1000}" for i in range(batch)],
                [now] * batch,
                [start] * batch,
                ["deepseek/deepseek-chat"] * batch,
            )
    elapsed = time.perf_counter() - started
    await conn.execute("DROP TABLE bench_rows")
    await conn.close()
    return n / elapsed


async def top_up_accounts(base: str, token: str, accounts: list[str]) -> None:
    """A PAYG balance no bench can spend, so that every PAYG check is admitted. Billing decides
    top-ups once its projection has caught up with the log (503 until then): retried."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for account_id in accounts:
            url = f"{base}/admin/v1/accounts/{account_id}/balance"
            body = {"amount_usd": "1000000.00", "topup_ref": f"bench-{account_id}"}
            for _ in range(300):
                async with session.post(url, json=body) as r:
                    if r.status != 503:
                        assert r.status == 201, await r.text()
                        break
                await asyncio.sleep(1)


async def create_accounts(base: str, token: str, n: int) -> list[str]:
    """n new accounts' ids (bench/projections.py's creation, which retries a service's first 503s)."""
    return [account_id for account_id, _ in await bench_projections.create_accounts(base, token, n)]


async def ingest_and_project(
    base: str,
    token: str,
    settings,
    accounts: list[str],
    n: int,
    batch: int,
    concurrency: int,
    rate: float | None = None,
) -> dict[str, float]:
    """Ingest n events (as fast as `concurrency` clients go, or paced at `rate` events/s) and follow
    the quota projection until it has applied them all."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    pg = await asyncpg.connect(settings.database_url)
    sampler_pg = await asyncpg.connect(settings.database_url)
    start_seq = (await js.stream_info(settings.stream)).state.last_seq
    stream_samples: list[tuple[float, int]] = []
    applied_samples: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            t = time.perf_counter()
            stream_samples.append((t, (await js.stream_info(settings.stream)).state.last_seq))
            ckpt = await sampler_pg.fetchval("SELECT min(last_seq) FROM quota.checkpoints WHERE projection = 'quota'")
            applied_samples.append((time.perf_counter(), int(ckpt or 0)))
            await asyncio.sleep(0.02)

    now = datetime.now(UTC).isoformat()
    bodies = []
    for b in range(n // batch):
        bodies.append(
            msgspec.json.encode(
                {
                    "events": [
                        {
                            "event_id": uuid.uuid4().hex,
                            "account_id": accounts[(b * batch + i) % len(accounts)],
                            "model": "deepseek/deepseek-chat",
                            "input_tokens": 1000 + i,
                            "output_tokens": 200,
                            "billing_mode": "subscription",
                            "occurred_at": now,
                        }
                        for i in range(batch)
                    ]
                }
            )
        )
    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    ingest_elapsed = await post_batches(base, token, bodies, events_per_body=batch, rate=rate, clients=concurrency)
    end_seq = (await js.stream_info(settings.stream)).state.last_seq
    while True:
        ckpts = await pg.fetch("SELECT partition, last_seq FROM quota.checkpoints WHERE projection = 'quota'")
        pending = sum(
            c.num_pending + c.num_ack_pending
            for c in await js.consumers_info(settings.stream)
            if c.name.startswith("quota-")
        )
        if pending == 0 and ckpts:
            break
        await asyncio.sleep(0.02)
    project_elapsed = time.perf_counter() - started
    done.set()
    await sampler
    lags = []
    for t_pub, seq in stream_samples:
        if seq <= start_seq or seq > end_seq:
            continue
        t_applied = next((t for t, applied in applied_samples if applied >= seq and t >= t_pub), None)
        if t_applied is not None:
            lags.append(t_applied - t_pub)
    await pg.close()
    await sampler_pg.close()
    await nc.close()
    return {
        "ingest_eps": n / ingest_elapsed,
        "project_eps": n / project_elapsed,
        "lag_p50": pct(lags, 0.5),
        "lag_p99": pct(lags, 0.99),
    }


class Echo:
    """bench.paced's echo responder (a child process): the floor of the paced client, on the same
    nats-server, in the same run."""

    SUBJECT = "bench.echo"

    def __init__(self, url: str) -> None:
        self._url = url
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Echo":
        command = [sys.executable, "-m", "bench.paced", "echo", "--url", self._url, "--subject", self.SUBJECT]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "ready": subscribed
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()  # its signal to stop
        self.process.wait(timeout=15)


async def quota_checks(
    url: str, accounts: list[str], mode: list[str], watch: dict[str, list[int]], subject: str = subjects.QUOTA_CHECK
) -> dict[str, Any]:
    """One run of bench.paced (`mode`: e.g. ["paced", "--rate", "5000"], ["closed", "--concurrency", "1"]) in
    its own process: its figures, and the CPU per check of the processes in `watch`."""
    command = [sys.executable, "-m", "bench.paced", *mode, "--url", url, "--subject", subject]
    child = await asyncio.create_subprocess_exec(*command, "--watch", json.dumps(watch), stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE)  # fmt: skip
    out, _ = await child.communicate(json.dumps(accounts).encode())
    if child.returncode != 0:
        raise RuntimeError(f"bench.paced exited with {child.returncode}")
    return dict(json.loads(out))


async def main(args: argparse.Namespace) -> None:
    with work_dir() as work:
        await run_parts(args, work)


async def run_parts(args: argparse.Namespace, work: Path) -> None:
    nats_server = LocalNats(work / "nats")
    postgres = LocalPostgres(work / "postgres", durable=True)
    nats_server.start()
    postgres.start()
    settings = load_settings(
        {},
        nats_url=nats_server.url,
        database_url=postgres.url,
        ingress_port=free_port(),
        quota_port=free_port(),
        keys_port=free_port(),
        billing_port=free_port(),
        refund_port=free_port(),
    )
    await set_up(settings)

    def servers() -> dict[str, list[int]]:
        """The bench's NATS and Postgres processes, read afresh at each call (every new connection
        to Postgres is a new backend process): what every part counts beside its services."""
        assert nats_server.process is not None
        return {"nats-server": [nats_server.process.pid], "postgres": postgres_pids(postgres.data_dir)}

    # --part: the core part (below), the gateway, scale or replay part (bench/*.py), on these servers.
    try:
        if args.part in ("core", "quota", "all"):
            await core(args, work, nats_server, postgres, settings)
        if args.part in ("gateway", "all"):
            await bench_gateway.run(args, work, settings, servers)
        if args.part == "scale":
            await bench_scale.run(args, work, settings, servers)
        if args.part == "projections":
            await bench_projections.run(args, work, settings, servers)
        if args.part == "memory":
            await bench_memory.run(args, settings.database_url)
        if args.part == "replay":
            await bench_replay.run(args.replay_events, args.accounts, work, settings, servers)
    finally:
        postgres.stop()
        nats_server.stop()


async def ingest_rows(
    args: argparse.Namespace, base: str, settings: Settings, accounts: list[str], nats_server: LocalNats,
    postgres: LocalPostgres, ingress: ServiceProcess, quota: ServiceProcess, publish_eps: float, insert_eps: float,
) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """Ingest flat out and paced, the quota projection following: the rows of the table."""
    assert ingress.process is not None and quota.process is not None and nats_server.process is not None
    groups = {
        "nats-server": [nats_server.process.pid],
        "postgres": postgres_pids(postgres.data_dir),
        "ingress": [ingress.process.pid],
        "quota": [quota.process.pid],
        "bench client": [os.getpid()],
    }
    cpu_before, wall = cpu_of(groups), time.perf_counter()
    flow = await ingest_and_project(base, settings.ingest_token, settings, accounts, args.events, args.batch,
                                    args.concurrency)  # fmt: skip
    cpu_after, wall = cpu_of(groups), time.perf_counter() - wall
    cores = {name: (cpu_after[name] - cpu_before[name]) / wall for name in groups}
    paced = await ingest_and_project(base, settings.ingest_token, settings, accounts, args.events // 2,
                                     args.batch // 4, args.concurrency, rate=args.paced_rate)  # fmt: skip
    return [
        ("bare JetStream async publish", f"{publish_eps:,.0f} events/s", "", ""),
        ("bare asyncpg batched insert", f"{insert_eps:,.0f} events/s", "", ""),
        ("ingest (POST /v1/usage -> JetStream ack)", f"{flow['ingest_eps']:,.0f} events/s",
         f"{flow['ingest_eps'] / publish_eps:.0%} of bare publish", "target >= 15,000 and >= 50%"),
        ("projection (quota, while ingest runs)", f"{flow['project_eps']:,.0f} events/s",
         f"{flow['project_eps'] / insert_eps:.0%} of bare insert", "target >= 15,000"),
        ("projection lag, ingest flat out",
         f"p50 {flow['lag_p50'] * 1000:,.0f} ms, p99 {flow['lag_p99'] * 1000:,.0f} ms", "",
         "(ingest outruns projection)"),
        (f"paced ingest at {args.paced_rate:,}/s", f"{paced['ingest_eps']:,.0f} events/s in", "", ""),
        ("projection lag, paced", f"p50 {paced['lag_p50'] * 1000:,.0f} ms, p99 {paced['lag_p99'] * 1000:,.0f} ms",
         f"projected {paced['project_eps']:,.0f} events/s", "target p99 < 1 s"),
        ("cores used during ingest+projection", ", ".join(f"{k} {v:.2f}" for k, v in cores.items()), "",
         f"of {os.cpu_count()}"),
    ]  # fmt: skip


async def core(
    args: argparse.Namespace, work: Path, nats_server: LocalNats, postgres: LocalPostgres, settings: Settings
) -> None:
    # RPM and caps out of reach, so that every quota.check below is admitted and holds a reservation.
    plans = bench_gateway.write_bench_plans(work / "bench-plans.json")
    env = {**settings_environ(settings), "FLOWPLAN_LOG_LEVEL": "WARNING", "FLOWPLAN_PLANS_PATH": str(plans)}
    quota = ServiceProcess("quota", env, settings.quota_port, work)
    ingress = ServiceProcess("ingress", env, settings.ingress_port, work)
    keys = ServiceProcess("keys", env, settings.keys_port, work)  # POST /admin/v1/accounts issues a key
    billing = ServiceProcess("billing", env, settings.billing_port, work)  # decides the PAYG top-ups
    try:
        quota.start()
        keys.start()
        ingress.start()
        base = f"http://127.0.0.1:{settings.ingress_port}"
        ingest = args.part != "quota"
        print(f"flowplan bench: {args.events if ingest else 0:,} events, {os.cpu_count()} cores, "
              f"Python {sys.version.split()[0]}")  # fmt: skip
        rows: list[tuple[str, str, str, str]] = []
        if ingest:
            publish_eps = await bare_publish(settings.nats_url, args.events)
            insert_eps = await bare_insert(settings.database_url, args.events)
        accounts = await create_accounts(base, settings.admin_token, args.accounts)
        keys.stop()  # needed only to issue the accounts' keys: not part of what is measured
        await asyncio.sleep(1)
        if ingest:
            rows += await ingest_rows(args, base, settings, accounts, nats_server, postgres, ingress, quota,
                                      publish_eps, insert_eps)  # fmt: skip
        rates = [int(r) for r in str(args.check_rates).split(",") if r.strip()]
        assert quota.process is not None and nats_server.process is not None
        url, seconds = settings.nats_url, str(args.check_seconds)
        served = {"quota": [quota.process.pid], "nats-server": [nats_server.process.pid]}
        with Echo(url) as echo:
            assert echo.process is not None
            echoed = {"echo": [echo.process.pid], "nats-server": [nats_server.process.pid]}

            async def floor(mode: list[str]) -> dict[str, Any]:
                return await quota_checks(url, accounts, mode, echoed, Echo.SUBJECT)

            # One at a time, then paced with every call ended (nothing left for quota's sweep), then paced
            # with the calls left to the sweep: its tens of thousands of reservations would weigh on the rest.
            one = ["closed", "--concurrency", "1", "--seconds", seconds]
            floors: dict[int | str, dict[str, Any]] = {"one": await floor(one)}
            ended: dict[int | str, dict[str, Any]] = {"one": await quota_checks(url, accounts, [*one, "--ended"],
                                                                                 served)}  # fmt: skip
            for rate in rates:
                paced = ["paced", "--rate", str(rate), "--seconds", seconds]
                floors[rate] = await floor(paced)
                ended[rate] = await quota_checks(url, accounts, [*paced, "--ended"], served)
            checks: dict[int | str, dict[str, Any]] = {}
            for rate in rates:
                checks[rate] = await quota_checks(url, accounts, ["paced", "--rate", str(rate), "--seconds", seconds],
                                                  served)  # fmt: skip
            closed = ["closed", "--concurrency", "32", "--seconds", seconds]
            floors["closed"], checks["closed"] = await floor(closed), await quota_checks(url, accounts, closed, served)
        payg_accounts = accounts[:100]
        billing.start()  # only now: the ingest and projection figures above are ingress and quota alone
        await top_up_accounts(base, settings.admin_token, payg_accounts)
        billing.stop()
        payg: dict[int | str, dict[str, Any]] = {
            rate: await quota_checks(url, payg_accounts, ["paced", "--rate", str(rate), "--seconds", seconds,
                                                          "--billing-mode", "payg"], served)
            for rate in rates
        }  # fmt: skip
        payg["closed"] = await quota_checks(url, payg_accounts, [*closed, "--billing-mode", "payg"], served)
    finally:
        ingress.stop()
        keys.stop()
        billing.stop()
        quota.stop()

    def latency(result: dict[str, Any]) -> str:
        return f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"

    def cpu(result: dict[str, Any], server: str) -> str:
        us = result["cpu_us"]
        return f"CPU/check {server} {us[server]:,.0f} us, nats-server {us['nats-server']:,.0f} us"

    def sent(result: dict[str, Any]) -> str:
        return (f"sent {result['achieved']:,.0f}/s, {result['timeouts']:,.0f} timed out, from send p99 "
                f"{result['send_p99_ms']:.2f} ms, client late <= {result['late_max_ms']:.1f} ms")  # fmt: skip

    one_floor, one_quota = floors["one"], ended["one"]
    rows += [
        ("floor: echo, one at a time", latency(one_floor), f"{one_floor['per_s']:,.0f}/s", cpu(one_floor, "echo")),
        ("quota.check one at a time, calls ended", latency(one_quota), f"{one_quota['per_s']:,.0f}/s",
         cpu(one_quota, "quota")),
    ]  # fmt: skip
    for rate in rates:
        sub, pg, end, floor_ = checks[rate], payg[rate], ended[rate], floors[rate]
        rows += [
            (f"floor: echo at {rate:,}/s (paced)", latency(floor_), sent(floor_), cpu(floor_, "echo")),
            (f"quota.check at {rate:,}/s, calls ended", latency(end), sent(end), cpu(end, "quota")),
            (f"quota.check at {rate:,}/s (paced)", latency(sub), sent(sub), cpu(sub, "quota") + ", target p99 < 2 ms"),
            (f"PAYG quota.check at {rate:,}/s (paced)", latency(pg),
             f"p99 {pg['p99_ms'] / sub['p99_ms']:.2f}x subscription's, " + sent(pg),
             cpu(pg, "quota") + ", target p99 < 2 ms, <= 1.2x"),
        ]  # fmt: skip
    echo_loop, sub, pg = floors["closed"], checks["closed"], payg["closed"]
    rows += [
        ("floor: echo, closed loop (32 clients)", f"{echo_loop['per_s']:,.0f} checks/s", "", cpu(echo_loop, "echo")),
        ("quota.check closed loop (32 clients)", f"{sub['per_s']:,.0f} checks/s", f"{sub['admitted']:.0%} admitted",
         cpu(sub, "quota")),
        ("PAYG quota.check closed loop", f"{pg['per_s']:,.0f} checks/s",
         f"{pg['admitted']:.0%} admitted, {pg['per_s'] / sub['per_s']:.2f}x subscription's rate", cpu(pg, "quota")),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, ratio, target in rows:
        print(f"{name:<{width}}  {value:<32} {ratio:<28} {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--paced-rate", type=int, default=15000)
    parser.add_argument("--check-rates", default="2000,5000", help="paced quota.check rates, comma-separated")
    parser.add_argument("--check-seconds", type=float, default=5.0)
    parser.add_argument("--part", choices=("core", "quota", "gateway", "replay", "scale", "projections", "memory",
                                           "all"), default="all",
                        help="all = core and gateway; quota = core's quota.check rows only; replay, scale, "
                             "projections and memory (minutes long) only when asked for")  # fmt: skip
    parser.add_argument("--replay-events", type=int, default=1_000_000)
    bench_gateway.add_arguments(parser)
    bench_scale.add_arguments(parser)
    bench_projections.add_arguments(parser)
    bench_memory.add_arguments(parser)
    asyncio.run(main(parser.parse_args()))
