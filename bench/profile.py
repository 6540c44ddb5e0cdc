"""Profiles for `python -m bench --part gateway --profile`: py-spy (pinned in the dev extras) samples
the gateway process while wrk drives it (64 connections, non-streamed), then the quota process
while 32 closed-loop clients send quota.check; each prints its top functions by own time and by
cumulative time (share of the samples in which the function is on the stack), and keeps the raw
collapsed stacks (`<work>/profile-*.txt`, for flamegraph tools).
"""

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import nats

from bench import wrk as bench_wrk
from proto.v1 import QuotaCheck, encode, subjects

ADMITTED = 0
"""Gateway calls answered 200 during the profile run: metered like the others, counted by the check."""
TOP = 20


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: `make .venv/.installed` installs it (dev extras)")
    return found


def record(pid: int, seconds: float, output: Path) -> "subprocess.Popen[bytes]":
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    command += ["--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frame_name(frame: str) -> str:
    """'handle (services/gateway/app.py:120)' -> 'handle (services/gateway/app.py)': one row per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/wt-", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = path.split("/", 1)[1] if marker == "/wt-" else path
    return f"{name} ({path})" if path else name


def top_items(collapsed: str, n: int = 2 * TOP) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top by own samples, top by cumulative samples) from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            cumulative[name] += count
    return total, own.most_common(n), cumulative.most_common(n)


def show(title: str, path: Path) -> None:
    total, own, cumulative = top_items(path.read_text() if path.exists() else "")
    print(f"\n{title}: {total:,} samples (200/s, idle excluded); raw stacks: {path}")
    if not total:
        print("  no samples (py-spy needs ptrace: run as root, or with CAP_SYS_PTRACE)")
        return
    print(f"  {'own':>6}  top by own time")
    for name, count in own:
        print(f"  {count / total:>6.1%}  {name}")
    print(f"  {'cum':>6}  top by cumulative time (without the frames on nearly every stack: the loop, runpy)")
    for name, count in [(n, c) for n, c in cumulative if c < 0.9 * total][:TOP]:
        print(f"  {count / total:>6.1%}  {name}")


async def closed_loop_checks(nats_url: str, account_id: str, seconds: float, clients: int = 32) -> int:
    nc = await nats.connect(nats_url)
    stop_at, count = time.perf_counter() + seconds, 0

    async def client() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            request = QuotaCheck(account_id=account_id, reservation_id=uuid.uuid4().hex, model="deepseek/deepseek-chat",
                                 estimated_flows_micros=1, billing_mode="subscription")  # fmt: skip
            await nc.request(subjects.QUOTA_CHECK, encode(request), timeout=5)
            count += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    await nc.close()
    return count


async def gateway_and_quota(
    wrk: str, url: str, key: str, gateway_pid: int, quota_pid: int, nats_url: str, check_account: str,
    seconds: float, work: Path,
) -> None:  # fmt: skip
    """Profile the gateway under wrk, then quota under closed-loop quota.check (on check_account,
    whose reservations then wait for the heartbeats to lapse: not the metered bench account)."""
    global ADMITTED
    gateway_out, quota_out = work / "profile-gateway.txt", work / "profile-quota.txt"
    spy = record(gateway_pid, seconds, gateway_out)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    from bench.gateway import request_body

    cell = await asyncio.to_thread(
        bench_wrk.measure, wrk, url, request_body(False), headers, 64, seconds + 2, 0, {"gateway": [gateway_pid]}
    )
    ADMITTED += cell.ok
    await asyncio.to_thread(spy.wait)
    spy_q = record(quota_pid, seconds, quota_out)
    checks = await closed_loop_checks(nats_url, check_account, seconds + 2)
    await asyncio.to_thread(spy_q.wait)
    show(f"py-spy: the gateway process under wrk (64 connections, non-stream, {cell.rps:,.0f} calls/s)", gateway_out)
    show(f"py-spy: the quota process under quota.check (32 closed-loop clients, {checks / (seconds + 2):,.0f}/s)",
         quota_out)  # fmt: skip
