"""Benchmark of the platform core, in one run on this machine (not a timed test).

Measures, side by side:
  * bare JetStream async publish (nats-py, Nats-Msg-Id set, file storage): the floor of ingest
  * bare asyncpg batched INSERT (unnest, one transaction per 1,000 rows): the floor of projection
  * ingest: batched POST /v1/usage until JetStream acked, events/s
  * projection: events/s applied to Postgres while ingest runs, and its lag (p50/p99)
  * quota.check round trips: p50/p99 at a fixed 2,000 checks/s, and the closed-loop maximum

Every server is started here, on free ports, with durable settings (fsync on).
`--part gateway` (or `all`, the default) also measures the gateway: see bench/gateway.py.
`--part replay` measures `flowplan replay --projection all --verify` over 1,000,000 events: see bench/replay.py.
`--part scale` measures one gateway against two, and the CPU per call of each process: see bench/scale.py.
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

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
from bench.procstat import cpu_of, cpu_seconds, pct, system_seconds
from libs.localservers import LocalNats, LocalPostgres, free_port
from libs.settings import Settings, load_settings, settings_environ
from libs.setup import set_up
from proto.v1 import QuotaCheck, QuotaDecision, ReleaseReservation, encode, subjects
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


async def quota_checks(
    url: str,
    accounts: list[str],
    rate: int,
    seconds: float,
    billing_mode: str = "subscription",
    quota_pid: int = 0,
    *,
    ended: bool = False,
) -> dict[str, float]:
    """ended=False: every admitted check's reservation is left for quota's sweep to end (no heartbeat,
    no usage: as after a gateway died). ended=True: each call ends at once without usage, released as
    a gateway does when its upstream fails, so reservations end as calls' do, not by the sweep."""
    nc = await nats.connect(url)
    latencies: list[float] = []
    timeouts: list[int] = []
    admitted = 0

    async def one(account_id: str) -> None:
        nonlocal admitted
        check = QuotaCheck(
            account_id=account_id,
            reservation_id=uuid.uuid4().hex,
            model="deepseek/deepseek-chat",
            estimated_flows_micros=1,
            billing_mode=billing_mode,  # type: ignore[arg-type]
        )
        request = encode(check)
        t = time.perf_counter()
        try:
            reply = await nc.request(subjects.QUOTA_CHECK, request, timeout=CHECK_TIMEOUT_S)
        except nats.errors.TimeoutError:  # counted, and in the percentiles as the timeout: quota fell behind
            timeouts.append(1)
            latencies.append(CHECK_TIMEOUT_S)
            return
        latencies.append(time.perf_counter() - t)
        decision = msgspec.json.decode(reply.data, type=QuotaDecision)
        admitted += decision.admitted
        if ended and decision.admitted:
            release = ReleaseReservation(account_id=check.account_id, reservation_id=check.reservation_id)
            await nc.publish(subjects.QUOTA_RELEASE, encode(release))

    # Open loop at a fixed rate: a request every 1/rate s, whether or not earlier ones returned.
    tasks = []
    started = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        target = started + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(accounts[i % len(accounts)])))
    sent = total / (time.perf_counter() - started)
    await asyncio.gather(*tasks)
    fixed = {
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "achieved": sent,
        "timeouts": len(timeouts),
    }
    # Closed loop: 32 clients back to back, for the maximum.
    count = 0
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await one(accounts[(k * 7919 + count) % len(accounts)])
            count += 1

    t0, cpu0, sys0 = time.perf_counter(), cpu_seconds(quota_pid), system_seconds(quota_pid)
    await asyncio.gather(*(client(k) for k in range(32)))
    fixed["max_per_s"] = (count - len(timeouts) + fixed["timeouts"]) / (time.perf_counter() - t0)
    fixed["cpu_us"] = (cpu_seconds(quota_pid) - cpu0) / (count or 1) * 1e6  # quota's CPU per check
    fixed["system_us"] = (system_seconds(quota_pid) - sys0) / (count or 1) * 1e6  # of which in the kernel
    fixed["admitted"] = admitted / (len(latencies) or 1)
    await nc.close()
    return fixed


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
        assert quota.process is not None
        pid = quota.process.pid
        # First the calls that end (nothing left for the sweep), then those left to it: the sweep of the
        # second kind's tens of thousands of reservations would weigh on the first's figures.
        ended = {rate: await quota_checks(settings.nats_url, accounts, rate, args.check_seconds, quota_pid=pid,
                                          ended=True) for rate in rates}  # fmt: skip
        checks = {rate: await quota_checks(settings.nats_url, accounts, rate, args.check_seconds, quota_pid=pid)
                  for rate in rates}  # fmt: skip
        payg_accounts = accounts[:100]
        billing.start()  # only now: the ingest and projection figures above are ingress and quota alone
        await top_up_accounts(base, settings.admin_token, payg_accounts)
        billing.stop()
        payg = {
            rate: await quota_checks(settings.nats_url, payg_accounts, rate, args.check_seconds, "payg", pid)
            for rate in rates
        }
    finally:
        ingress.stop()
        keys.stop()
        billing.stop()
        quota.stop()

    for rate in rates:
        sub, pg = checks[rate], payg[rate]
        rows += [
            (f"quota.check at {rate:,}/s (paced)", f"p50 {sub['p50_ms']:.2f} ms, p99 {sub['p99_ms']:.2f} ms",
             f"sent {sub['achieved']:,.0f}/s, {sub['timeouts']:,.0f} timed out", "target p99 < 2 ms"),
            (f"PAYG quota.check at {rate:,}/s (paced)", f"p50 {pg['p50_ms']:.2f} ms, p99 {pg['p99_ms']:.2f} ms",
             f"p99 {pg['p99_ms'] / sub['p99_ms']:.2f}x subscription's, sent {pg['achieved']:,.0f}/s, "
             f"{pg['timeouts']:,.0f} timed out",
             "target p99 < 2 ms, <= 1.2x"),
            (f"quota.check at {rate:,}/s, calls ended", f"p50 {ended[rate]['p50_ms']:.2f} ms, "
             f"p99 {ended[rate]['p99_ms']:.2f} ms",
             f"sent {ended[rate]['achieved']:,.0f}/s, each admitted call released", "reservations end as calls do"),
        ]  # fmt: skip
    sub, pg = checks[rates[0]], payg[rates[0]]
    rows += [
        ("quota.check closed loop (32 clients)", f"{sub['max_per_s']:,.0f} checks/s", f"{sub['admitted']:.0%} admitted",
         f"quota CPU {sub['cpu_us']:,.0f} us/check, {sub['system_us']:,.0f} of it system"),
        ("PAYG quota.check closed loop", f"{pg['max_per_s']:,.0f} checks/s",
         f"{pg['admitted']:.0%} admitted, {pg['max_per_s'] / sub['max_per_s']:.2f}x subscription's rate",
         f"quota CPU {pg['cpu_us']:,.0f} us/check, {pg['system_us']:,.0f} of it system"),
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
