"""Profiles for `python -m bench --part gateway --profile`: py-spy (pinned in the dev extras) samples
the gateway process while wrk drives it (64 connections unless told, non-streamed), then the quota
process while 32 closed-loop clients send quota.check; each prints its top functions by own time and by
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

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES: dict[str, tuple[str, ...]] = {
    # issue 14's suspects, each a set of frames (function and/or file, or source text of the sampled line):
    # the share of samples whose stack holds one of them is the most the suspect can cost. The gateway's
    # own steps are the call pipeline's (services/gateway/pipeline.py), the body's bytes its protocols'.
    "metric instruments (OTel add/record, attribute hashing; libs/observability.py)": (
        "opentelemetry", "metrics/_internal", "libs/observability.py"),
    "JSON encode/decode on flowplan's own lines (msgspec; body re-encoding)": (
        "src:_encode.encode(", "src:_json.decode(", "src:json.decode(", "src:encode("),
    "nats-py request/reply (quota.check, key.lookup)": ("Client.request ", "Client._request_new_style"),
    "nats-py's flusher (its socket writes)": ("Client._flusher",),
    "nats-py's reading (parser, message dispatch)": ("Client._read_loop", "Subscription._wait_for_msgs"),
    "header dicts (flowplan's lines; aiohttp's header preparation)": ("_prepare_headers", "src:headers", "multidict"),
    "usage recording (recorder, publisher, their futures)": ("gateway/recorder.py", "eventlog/publisher.py"),
    "asyncio task creation": ("create_task ",),
    "authentication (key cache, key.lookup)": ("CallPipeline.authenticate ",),
    "admission (quota.check and its reply)": ("CallPipeline.admit ",),
    "the upstream call (aiohttp client)": ("ClientSession._request",),
    "writing the response (aiohttp server)": ("finish_response", "StreamResponse.write", "_send_headers"),
    "reading the request (aiohttp server, JSON parse)": ("CallPipeline.read ",),
}  # fmt: skip
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


def syscw(pid: int) -> int:
    """Write syscalls the process made so far (write, writev: its socket writes go through them)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def _source(path: str, line: int, cache: dict[str, list[str]]) -> str:
    if path not in cache:
        try:
            cache[path] = (ROOT / path).read_text().splitlines()
        except (OSError, ValueError):
            cache[path] = []
    lines = cache[path]
    return lines[line - 1] if 0 < line <= len(lines) else ""


def candidates(collapsed: str) -> list[tuple[str, float]]:
    """Each suspect's share of the samples (stacks holding one of its frames); "src:..." matches the
    source text of the sampled line when it is the innermost frame and in the project's own code."""
    hits: Counter[str] = Counter()
    total, cache = 0, {}  # type: ignore[var-annotated]
    for row in collapsed.splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        texts = []
        for frame in frames:
            where = frame.partition(" (")[2].rstrip(")")
            path, _, line = where.rpartition(":")
            source = (
                _source(path, int(line), cache) if line.isdigit() and path.startswith(("services/", "libs/")) else ""
            )
            texts.append((frame, source))
        leaf = texts[-1][1]  # C code (msgspec, dict building) shows as the time of the line that calls it
        for name, patterns in CANDIDATES.items():
            if any((p[4:] in leaf) if p.startswith("src:") else any(p in f for f, _ in texts) for p in patterns):
                hits[name] += count
    return [(name, hits[name] / total if total else 0.0) for name in CANDIDATES]


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
    print(f"  {'share':>6}  issue 14's suspects (samples whose stack holds one of their frames; they overlap)")
    for name, share in candidates(path.read_text()):
        print(f"  {share:>6.1%}  {name}")


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
    seconds: float, work: Path, connections: int = 64,
) -> None:  # fmt: skip
    """Profile the gateway under wrk, then quota under closed-loop quota.check (on check_account,
    whose reservations then wait for the heartbeats to lapse: not the metered bench account)."""
    global ADMITTED
    gateway_out, quota_out = work / "profile-gateway.txt", work / "profile-quota.txt"
    writes = syscw(gateway_pid)
    spy = record(gateway_pid, seconds, gateway_out)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    from bench.gateway import request_body

    cell = await asyncio.to_thread(
        bench_wrk.measure, wrk, url, request_body(False), headers, connections, seconds + 2, 0,
        {"gateway": [gateway_pid]},
    )  # fmt: skip
    ADMITTED += cell.ok
    gateway_writes = (syscw(gateway_pid) - writes) / max(1, cell.result["requests"] + cell.warmup_ok)
    await asyncio.to_thread(spy.wait)
    writes = syscw(quota_pid)
    spy_q = record(quota_pid, seconds, quota_out)
    checks = await closed_loop_checks(nats_url, check_account, seconds + 2)
    quota_writes = (syscw(quota_pid) - writes) / max(1, checks)
    await asyncio.to_thread(spy_q.wait)
    show(f"py-spy: the gateway process under wrk ({connections} connections, non-stream, {cell.rps:,.0f} calls/s)",
         gateway_out)  # fmt: skip
    show(f"py-spy: the quota process under quota.check (32 closed-loop clients, {checks / (seconds + 2):,.0f}/s)",
         quota_out)  # fmt: skip
    print(f"\nwrite syscalls (/proc/<pid>/io syscw, sockets and logs): gateway {gateway_writes:.2f} per call "
          f"under wrk, quota {quota_writes:.2f} per quota.check (its reply and whatever else it wrote)")  # fmt: skip
