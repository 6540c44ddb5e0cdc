"""One request/reply round trip: faststream's subscriber (libs.rpc.Responders) against a raw nats-py
subscription answering the same message, on one nats-server, side by side in one run.

    .venv/bin/python -m bench.rpc [--calls 5000] [--concurrency 1]

Both answer `QuotaStatusRequest` with the same `QuotaStatus`, decoded and encoded with msgspec; the
client is the same `libs.rpc.ask` for both. What differs is only the serving side: faststream's
message parsing, middlewares and reply publishing against `nc.subscribe(cb=...)` and `msg.respond`.
The README quotes the figures: why quota.check and key.lookup stay on raw nats-py.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg

from libs.localservers import LocalNats
from libs.rpc import Responders, ask
from proto.v1 import QuotaStatus, QuotaStatusRequest, WindowStatus, encode, rpc

NOW = datetime(2026, 11, 30, tzinfo=UTC)
WINDOW = WindowStatus(used_flows_micros=1, limit_flows_micros=50_000_000, reserved_flows_micros=0, started_at=NOW,
                      resets_at=NOW)  # fmt: skip
RAW = rpc.Rpc[QuotaStatusRequest, QuotaStatus]("bench.raw.status", QuotaStatusRequest, QuotaStatus, "bench", "raw")
FAST = rpc.Rpc[QuotaStatusRequest, QuotaStatus]("bench.fast.status", QuotaStatusRequest, QuotaStatus, "bench", "fs")


def status(request: QuotaStatusRequest) -> QuotaStatus:
    return QuotaStatus(account_id=request.account_id, known=True, plan="pro", window_5h=WINDOW, weekly=WINDOW,
                       monthly=WINDOW)  # fmt: skip


async def measure(
    nc: nats.NATS, call: rpc.Rpc[QuotaStatusRequest, QuotaStatus], calls: int, workers: int
) -> dict[str, float]:
    latencies: list[float] = []

    async def client(k: int) -> None:
        for i in range(calls // workers):
            started = time.perf_counter()
            await ask(nc, call, QuotaStatusRequest(account_id=f"acc_{k}_{i % 100}"), 5.0)
            latencies.append(time.perf_counter() - started)

    for i in range(200):  # warm up
        await ask(nc, call, QuotaStatusRequest(account_id=f"warm_{i}"), 5.0)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(workers)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "calls_per_s": len(latencies) / elapsed,
    }


async def run(calls: int, workers: int) -> dict[str, dict[str, float]]:
    server = LocalNats(Path(tempfile.mkdtemp(prefix="flowplan-bench-rpc-")) / "nats")
    server.start()
    try:
        responder = await nats.connect(server.url)
        decoder = msgspec.json.Decoder(QuotaStatusRequest)

        async def on_raw(msg: Msg) -> None:
            await msg.respond(encode(status(decoder.decode(msg.data))))

        await responder.subscribe(RAW.subject, queue="bench", cb=on_raw)
        responders = Responders("bench", server.url)

        async def on_fast(request: QuotaStatusRequest) -> QuotaStatus:
            return status(request)

        responders.reply(FAST, on_fast)
        await responders.start()
        client = await nats.connect(server.url)
        results = {}
        for name, call in (("raw nats-py", RAW), ("faststream", FAST), ("raw nats-py again", RAW)):
            results[name] = await measure(client, call, calls, workers)
        await client.close()
        await responders.stop()
        await responder.close()
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    results = asyncio.run(run(args.calls, args.concurrency))
    header = f"{'responder':<20} {'p50 µs':>8} {'p99 µs':>8} {'calls/s':>9}"
    print(f"{header}   ({args.calls} calls, {args.concurrency} at once)")
    for name, figures in results.items():
        print(f"{name:<20} {figures['p50_us']:8.0f} {figures['p99_us']:8.0f} {figures['calls_per_s']:9.0f}")


if __name__ == "__main__":
    main()
