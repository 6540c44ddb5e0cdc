"""quota.check's load generator, in a child process of its own (uvloop), and the echo responder
that gives its floor: the same client against a responder that does nothing, on the same
nats-server, in the same run.

    python -m bench.paced paced --url URL --subject S --rate 5000 --seconds 5 < accounts.json
    python -m bench.paced closed --url URL --subject S --concurrency 32 --seconds 5 < accounts.json
    python -m bench.paced echo --url URL --subject S

Paced is open loop. The schedule is a burst of rate/1000 requests at each millisecond (libuv's
timers have 1 ms resolution: a timer per request would fire on the next millisecond anyway),
sent whether or not earlier ones have returned. Latency is measured from the burst's scheduled
time, so a client that falls behind (its loop late) counts the delay against the replies it
sends late: no coordinated omission. It is also reported from the actual send ("from send")
and the client's largest lateness. Replies come to one wildcard inbox subscription, handed over
as nats-py parses them (libs.inbox): a timestamp per reply, no future, no task, no timer per
request. A request with no reply within CHECK_TIMEOUT_S counts as timed out and enters the
percentiles at that value.

Closed loop: `concurrency` clients back to back over libs.inbox.Requests.

Each prints one JSON line, with the CPU per request of the processes named in --watch, read from
/proc just before and just after the measured seconds.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import msgspec
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.procstat import cpu_of, pct
from libs.inbox import Requests, subscribe_handing_over
from proto.v1 import QuotaCheck, QuotaDecision, ReleaseReservation, encode, subjects

CHECK_TIMEOUT_S = 5.0
TICK_S = 0.001
ECHO_DECISION = encode(QuotaDecision(admitted=True, billing_mode="subscription"))


def checks(accounts: list[str], n: int, billing_mode: str) -> list[QuotaCheck]:
    return [
        QuotaCheck(account_id=accounts[i % len(accounts)], reservation_id=uuid.uuid4().hex,
                   model="deepseek/deepseek-chat", estimated_flows_micros=1, billing_mode=billing_mode)  # type: ignore[arg-type]
        for i in range(n)
    ]  # fmt: skip


class Releases:
    """ended: each admitted call ends at once without usage, released as a gateway does when its
    upstream fails (so reservations end as calls' do, not by quota's sweep)."""

    def __init__(self, nc: Client, enabled: bool) -> None:
        self._nc, self.enabled = nc, enabled
        self._decode = msgspec.json.Decoder(QuotaDecision)
        self._due: list[bytes] = []

    def note(self, check: QuotaCheck, reply: bytes) -> None:
        if self.enabled and self._decode.decode(reply).admitted:
            self._due.append(encode(ReleaseReservation(account_id=check.account_id,
                                                       reservation_id=check.reservation_id)))  # fmt: skip

    async def publish(self) -> None:
        due, self._due = self._due, []
        for release in due:
            await self._nc.publish(subjects.QUOTA_RELEASE, release)


async def paced(nc: Client, subject: str, requests: list[QuotaCheck], rate: int, ended: bool,
                watch: dict[str, list[int]]) -> dict[str, Any]:  # fmt: skip
    n, payloads = len(requests), [encode(r) for r in requests]
    prefix = nc.new_inbox() + "."
    scheduled, sent, received = [0.0] * n, [0.0] * n, [0.0] * n
    replies: list[bytes] = [b""] * n
    releases = Releases(nc, ended)

    def on_reply(msg: Msg) -> None:
        i = int(msg.subject[len(prefix) :])
        received[i] = time.perf_counter()
        replies[i] = msg.data
        releases.note(requests[i], msg.data)

    await subscribe_handing_over(nc, prefix + "*", on_reply)
    await nc.flush()
    per_tick = rate * TICK_S
    cpu0, client0, started = cpu_of(watch), time.process_time(), time.perf_counter()
    first = tick = 0
    while first < n:
        due_at = started + tick * TICK_S
        if (delay := due_at - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        now, last = time.perf_counter(), min(n, round((tick + 1) * per_tick))
        for i in range(first, last):
            scheduled[i], sent[i] = due_at, now
            await nc.publish(subject, payloads[i], reply=prefix + str(i))
        first, tick = last, tick + 1
        await releases.publish()
    sending_s = time.perf_counter() - started
    deadline = time.perf_counter() + CHECK_TIMEOUT_S
    while time.perf_counter() < deadline and not all(received):
        await asyncio.sleep(0.01)
        await releases.publish()
    cpu1, client1, elapsed = cpu_of(watch), time.process_time(), time.perf_counter() - started
    answered = [k for k in range(n) if received[k]]
    timeouts = n - len(answered)
    from_schedule = [received[k] - scheduled[k] for k in answered] + [CHECK_TIMEOUT_S] * timeouts
    from_send = [received[k] - sent[k] for k in answered] + [CHECK_TIMEOUT_S] * timeouts
    decode = msgspec.json.Decoder(QuotaDecision)
    return {
        "p50_ms": pct(from_schedule, 0.5) * 1000,
        "p99_ms": pct(from_schedule, 0.99) * 1000,
        "p999_ms": pct(from_schedule, 0.999) * 1000,
        "max_ms": max(from_schedule) * 1000,
        "send_p99_ms": pct(from_send, 0.99) * 1000,
        "late_max_ms": max(s - d for s, d in zip(sent, scheduled, strict=True)) * 1000,
        "achieved": n / sending_s,
        "timeouts": timeouts,
        "admitted": sum(decode.decode(replies[k]).admitted for k in answered) / n,
        "cpu_us": {name: (cpu1[name] - cpu0[name]) / n * 1e6 for name in watch},
        "client_cpu_us": (client1 - client0) / n * 1e6,
        "elapsed_s": elapsed,
    }


async def closed(nc: Client, subject: str, requests: list[QuotaCheck], concurrency: int, seconds: float,
                 ended: bool, watch: dict[str, list[int]]) -> dict[str, Any]:  # fmt: skip
    client = Requests(nc)
    await client.start()
    releases = Releases(nc, ended)
    latencies: list[float] = []
    admitted = 0
    decode = msgspec.json.Decoder(QuotaDecision)

    async def one(check: QuotaCheck) -> None:
        nonlocal admitted
        t = time.perf_counter()
        reply = await client.request(subject, encode(check), CHECK_TIMEOUT_S)
        latencies.append(time.perf_counter() - t)
        admitted += decode.decode(reply.data).admitted
        releases.note(check, reply.data)
        await releases.publish()

    for check in requests[:200]:  # warm up
        await one(check)
    latencies.clear()
    admitted, count = 0, 200
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            count += 1  # a reservation of its own, as each call has: none replaces an earlier one
            await one(msgspec.structs.replace(requests[count % len(requests)], reservation_id=uuid.uuid4().hex))

    cpu0, client0, started = cpu_of(watch), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, client1, elapsed = cpu_of(watch), time.process_time(), time.perf_counter() - started
    n = len(latencies)
    return {
        "per_s": n / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "admitted": admitted / (n or 1),
        "cpu_us": {name: (cpu1[name] - cpu0[name]) / (n or 1) * 1e6 for name in watch},
        "client_cpu_us": (client1 - client0) / (n or 1) * 1e6,
    }


async def echo(url: str, subject: str) -> None:
    """Answer every request on `subject` with one fixed admitted decision, as quota answers (nats-py
    callback, msg.respond), until stdin closes."""
    nc = await nats.connect(url)

    async def answer(msg: Msg) -> None:
        await msg.respond(ECHO_DECISION)

    await nc.subscribe(subject, queue="echo", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()


async def load(args: argparse.Namespace) -> dict[str, Any]:
    accounts: list[str] = json.loads(sys.stdin.read())
    watch: dict[str, list[int]] = json.loads(args.watch)
    nc = await nats.connect(args.url)
    try:
        if args.command == "paced":
            requests = checks(accounts, int(args.rate * args.seconds), args.billing_mode)
            return await paced(nc, args.subject, requests, args.rate, args.ended, watch)
        requests = checks(accounts, 20_000, args.billing_mode)
        return await closed(nc, args.subject, requests, args.concurrency, args.seconds, args.ended, watch)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="bench.paced: quota.check's load generator and echo responder")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("paced", "closed", "echo"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True)
        command.add_argument("--subject", default=subjects.QUOTA_CHECK)
        if name != "echo":
            command.add_argument("--seconds", type=float, default=5.0)
            command.add_argument("--billing-mode", default="subscription")
            command.add_argument("--ended", action="store_true", help="release each admitted call at once")
            command.add_argument("--watch", default="{}", help='JSON {"name": [pid, ...]}: CPU per request')
    commands.choices["paced"].add_argument("--rate", type=int, default=2000)
    commands.choices["closed"].add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.command == "echo":
        uvloop.run(echo(args.url, args.subject))
    else:
        print(json.dumps(uvloop.run(load(args))))


if __name__ == "__main__":
    main()
