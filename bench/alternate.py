"""Two checkouts' gateways on one stack, measured in alternation: the gateway process's CPU per
call before and after a change, on a machine that other work loads.

`python -m bench.alternate --before DIR [--rounds 4] [--seconds 5] [--connections 64]` starts the
gateway stack of `--part gateway` (bench/gateway.py) with this checkout's gateway and DIR's
(`git archive <commit> | tar -x -C DIR`), then runs wrk against one and the other in turn,
`rounds` times each, swapping which goes first every round. Each row is one wrk run: calls/s and
the CPU per call of the gateway process, quota and nats-server (user+system from /proc), and the
gateway's write syscalls per call (/proc/<pid>/io), and wrk's p50 and p99 in ms (at one
connection, what the gateway adds to a call's latency). A busy machine slows the calls, not the work
each one takes: CPU per call, alternated, is the figure to compare. `--profile` also records the
two gateways with py-spy (one wrk run each) and prints their top frames. Metering is checked
at the end, as in `--part gateway`.
"""

import argparse
import asyncio
import statistics
from pathlib import Path

import aiohttp
import nats

from bench import profile as bench_profile
from bench import work_dir
from bench import wrk as bench_wrk
from bench.gateway import BEFORE, GatewayStack, check_metering, postgres_pids, request_body, settle
from libs.localservers import LocalNats, LocalPostgres, free_port
from libs.settings import load_settings
from libs.setup import set_up


async def main(args: argparse.Namespace) -> None:
    with work_dir() as work:
        await alternate(args, work)


async def alternate(args: argparse.Namespace, work: Path) -> None:
    nats_server, postgres = LocalNats(work / "nats"), LocalPostgres(work / "postgres", durable=True)
    nats_server.start()
    postgres.start()
    stack: GatewayStack | None = None
    try:
        settings = load_settings(
            {}, nats_url=nats_server.url, database_url=postgres.url, billing_port=free_port(), refund_port=free_port()
        )
        await set_up(settings)
        stack = GatewayStack(settings, work, args.before)
        stack.start()
        nc = await nats.connect(settings.nats_url)
        account_id, key, admitted = await stack.create_account(nc)
        await settle(nc, settings)
        wrk = bench_wrk.ensure_wrk()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        targets = ("gateway", BEFORE)
        rows: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        batches: dict[int, dict[str, float]] = {}
        """this checkout's quota.check messages by how many checks each carried, per connection count"""
        print(f"work dir {work}; rows: target, connections, calls/s, CPU µs per call of gateway, quota, "
              "nats-server, write syscalls per call, p50 and p99 ms", flush=True)  # fmt: skip
        for round_ in range(args.rounds):
            for connections in args.connections:
                for target in targets if round_ % 2 == 0 else reversed(targets):
                    pid = stack.pid(target)
                    watch = {
                        target: [pid], "quota": [stack.pid("quota")],
                        "nats-server": [nats_server.process.pid] if nats_server.process else [],
                        "postgres": postgres_pids(postgres.data_dir),
                    }  # fmt: skip
                    writes = bench_profile.syscw(pid)
                    batched = await _check_batches(stack.urls[target]) if target == "gateway" else {}
                    cell = await asyncio.to_thread(
                        bench_wrk.measure, wrk, stack.urls[target], request_body(args.stream), headers, connections,
                        args.seconds, 1.0, watch,
                    )  # fmt: skip
                    calls = cell.result["requests"]
                    admitted += cell.ok
                    writes_per_call = (bench_profile.syscw(pid) - writes) / max(1, calls + cell.warmup_ok)
                    row = (
                        cell.rps, cell.per_call_us(target), cell.per_call_us("quota"), cell.per_call_us("nats-server"),
                        writes_per_call, cell.result["p50_us"] / 1000, cell.result["p99_us"] / 1000,
                    )  # fmt: skip
                    rows.setdefault((target, connections), []).append(row)
                    if batched:
                        seen = batches.setdefault(connections, {})
                        for bucket, total in (await _check_batches(stack.urls[target])).items():
                            seen[bucket] = seen.get(bucket, 0) + total - batched.get(bucket, 0)
                    print(f"  {target:<15} {connections:>3} {row[0]:>8,.0f}/s {row[1]:>7.0f} {row[2]:>6.0f} "
                          f"{row[3]:>6.0f} {row[4]:>6.2f} {row[5]:>6.2f} {row[6]:>6.2f} errors {cell.result['errors']}",
                          flush=True)  # fmt: skip
        print("\nmedians over the rounds (CPU µs per call; calls/s)")
        for (target, connections), values in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
            columns = [statistics.median(v) for v in zip(*values, strict=True)]
            print(f"  {target:<15} {connections:>3} conn: {columns[0]:>8,.0f}/s  gateway {columns[1]:>5.0f}  "
                  f"quota {columns[2]:>5.0f}  nats-server {columns[3]:>5.0f}  writes/call {columns[4]:.2f}  "
                  f"p50 {columns[5]:.2f} p99 {columns[6]:.2f} ms  "
                  f"(gateway CPU per run: {', '.join(f'{v[1]:.0f}' for v in values)})")  # fmt: skip
        for connections, seen in sorted(batches.items()):
            messages, checks = seen.pop("count", 0), seen.pop("sum", 0)
            print(f"  this checkout's gateway at {connections} connections: {checks:,.0f} quota.checks in "
                  f"{messages:,.0f} messages ({checks / max(1, messages):.2f} a message); messages carrying at "
                  f"most n: {', '.join(f'{n} {count:,.0f}' for n, count in seen.items())}")  # fmt: skip
        if args.profile:
            for target in targets:
                out = work / f"profile-{target}.txt"
                spy = bench_profile.record(stack.pid(target), args.profile_seconds, out)
                cell = await asyncio.to_thread(
                    bench_wrk.measure, wrk, stack.urls[target], request_body(args.stream), headers, 64,
                    args.profile_seconds + 2, 0, {},
                )  # fmt: skip
                admitted += cell.ok
                await asyncio.to_thread(spy.wait)
                bench_profile.show(f"py-spy: {target} under wrk (64 connections, {cell.rps:,.0f} calls/s)", out)
        metering = await check_metering(nc, stack, settings, account_id, admitted)
        window = metering["window"]
        verdict = "OK" if metering["stored"] >= admitted and window.reserved_flows_micros == 0 else "NOT OK"
        print(f"\nmetering: {admitted:,} calls answered 200, {metering['stored']:,} UsageRecorded stored, "
              f"{window.reserved_flows_micros / 1e6:.2f} Flows left reserved -> {verdict}")  # fmt: skip
        await nc.close()
    finally:
        if stack is not None:
            stack.stop()
        postgres.stop()
        nats_server.stop()


async def _check_batches(url: str) -> dict[str, float]:
    """flowplan_gateway_quota_check_batch from the gateway's /metrics: messages per bucket (`le`),
    `count` and `sum` (checks). Empty for a gateway without it (before qbatch)."""
    async with aiohttp.ClientSession() as session, session.get(url.split("/v1/")[0] + "/metrics") as response:
        text = await response.text()
    seen: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flowplan_gateway_quota_check_batch_"):
            name, value = line.split("{")[0].rsplit("_", 1)[-1], float(line.rsplit(" ", 1)[-1])
            bucket = line.split('le="')[1].split('"')[0].removesuffix(".0") if name == "bucket" else name
            seen[bucket] = value
    return seen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[64])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
