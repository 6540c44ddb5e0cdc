"""The C load generator of `make bench`: wrk (Debian's package), driving the same calls as bench/gateway.py.

A Python load generator spends about as much CPU per call as the proxy it measures, on the same
2 cores: it flatters every ratio towards 1. wrk costs a few µs per call, so the ratios measured with
it are the ones the targets hold for. wrk runs with a Lua script made here (the request body and
headers, and a `done` hook that prints one JSON line: requests, errors, p50, p99 in µs); the
bench reads every process's CPU from /proc before and after each measured run and divides by
the calls made, so each row says what one call cost in each process.

`ensure_wrk()` installs wrk with apt-get when it is missing (the only thing `make bench` installs
system-wide); `python -m bench.wrk --url URL [--key K] [--stream] [--connections C]` runs one cell.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from bench.procstat import cpu_of

DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_string(text: str) -> str:
    """A Lua long-bracket literal holding text as is (no escapes to get wrong)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def script(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body.decode())}"]
    # spaces inside the brackets: "[[[" would open a long string
    lines += [f"wrk.headers[ {lua_string(name)} ] = {lua_string(value)}" for name, value in headers.items()]
    return "\n".join(lines) + "\n" + DONE_HOOK


def parse(stdout: str) -> dict[str, Any]:
    """The JSON line the done hook printed (wrk prints its own summary before it)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result = dict(json.loads(line))
            result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6) if result["duration_us"] else 0.0
            return result
    raise ValueError(f"wrk printed no result line: {stdout[-500:]!r}")


def ensure_wrk() -> str:
    """wrk's path, installed from Debian's package when missing (as root; else say how)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("make bench needs wrk: run `apt-get install wrk` (Debian's package) as root")
    print("installing wrk (Debian's package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get did not install wrk")
    return found


@dataclass
class Cell:
    """One measured wrk run and the CPU each watched process spent during it."""

    result: dict[str, Any]
    cpu_s: dict[str, float] = field(default_factory=dict)
    warmup_ok: int = 0

    @property
    def ok(self) -> int:
        """Calls answered 2xx, the warm-up's included (each one of the gateway's is metered)."""
        return int(self.result["requests"] - self.result["status"]) + self.warmup_ok

    @property
    def rps(self) -> float:
        return float(self.result["rps"])

    def per_call_us(self, name: str) -> float:
        calls = self.result["requests"]
        return self.cpu_s.get(name, 0.0) / calls * 1e6 if calls else float("nan")

    def total_us(self) -> float:
        calls = self.result["requests"]
        return sum(self.cpu_s.values()) / calls * 1e6 if calls else float("nan")


def run_wrk(
    wrk: str, url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float, timeout_s: float = 30
) -> tuple[dict[str, Any], float]:
    """One wrk run; its result and the CPU seconds wrk itself used (children's times, reaped just now)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script(body, headers))
        path = f.name
    threads = 1 if connections < 8 else 2
    duration = max(1, round(seconds))  # wrk takes whole seconds only
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
    command += ["--timeout", f"{timeout_s:g}s", "-s", path, url]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = process.communicate()
        own = _children_cpu()
    finally:
        os.unlink(path)
    if process.returncode != 0:
        said = (err or out).decode(errors="replace")[-500:]
        raise RuntimeError(f"wrk exited with {process.returncode}: {said}")
    return parse(out.decode()), own


_children_seen = 0.0


def _children_cpu() -> float:
    """CPU seconds used by the children reaped since the last call (wrk runs one at a time)."""
    global _children_seen
    times = os.times()
    total = times.children_user + times.children_system
    used, _children_seen = total - _children_seen, total
    return used


def measure(
    wrk: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    warmup: float,
    watch: dict[str, list[int]],
) -> Cell:
    """A warm-up run (not measured), then the measured run with every watched process's CPU around it."""
    warmup_ok = 0
    if warmup > 0:
        warm, _ = run_wrk(wrk, url, body, headers, connections, warmup)
        warmup_ok = int(warm["requests"] - warm["status"])
    before = cpu_of(watch)
    _children_cpu()
    result, own = run_wrk(wrk, url, body, headers, connections, seconds)
    after = cpu_of(watch)
    cpu = {name: after[name] - before[name] for name in watch}
    cpu["wrk"] = own
    return Cell(result, cpu, warmup_ok)


COLUMNS = ("target", "simulator", "quota", "keys", "ingress", "billing", "refund", "nats-server", "postgres", "wrk")
MODES = ("non-stream", "stream")


def report(cells: dict[tuple[str, int, str], Cell], peer: str | None) -> None:
    """One table: each target's calls/s, latency and CPU per call of every process, as ratios to the bare proxy."""
    # then the earlier checkout's gateway (--gateway-before) and the peer, when they were measured
    targets = ["direct", "proxy", "gateway", *sorted({t for _, _, t in cells} - {"direct", "proxy", "gateway"})]
    conc = sorted({c for _, c, _ in cells})
    ms = 1000.0
    print(
        "\nwrk (C load generator), closed loop; latency to the last byte in ms; 'x proxy' = calls/s / the bare "
        "proxy's;\n'added' = latency - direct's; CPU in µs per call (user+system from /proc) of each process, "
        "'target' = the proxy/gateway/peer process"
    )
    head = (
        f"{'mode':<10} {'conc':>4} {'target':<14} {'calls/s':>8} {'x proxy':>7} {'p50':>7} {'p99':>7} "
        f"{'+p50':>6} {'+p99':>6} | " + " ".join(f"{name[:8]:>8}" for name in COLUMNS) + f" {'total':>7} {'err':>4}"
    )
    print(head + "\n" + "-" * len(head))
    for mode in MODES:
        for c in conc:
            if (mode, c, "proxy") not in cells:
                continue
            proxy, direct = cells[mode, c, "proxy"], cells[mode, c, "direct"]
            for t in targets:
                cell = cells.get((mode, c, t))
                if cell is None:
                    continue
                r, d = cell.result, direct.result
                cpu = " ".join(
                    f"{cell.per_call_us(t if name == 'target' else name):>8.0f}"
                    if (t != "direct" or name != "target") else f"{'-':>8}"
                    for name in COLUMNS
                )  # fmt: skip
                print(
                    f"{mode:<10} {c:>4} {t:<14} {cell.rps:>8,.0f} {cell.rps / proxy.rps if proxy.rps else 0:>7.0%} "
                    f"{r['p50_us'] / ms:>7.2f} {r['p99_us'] / ms:>7.2f} {(r['p50_us'] - d['p50_us']) / ms:>6.2f} "
                    f"{(r['p99_us'] - d['p99_us']) / ms:>6.2f} | {cpu} {cell.total_us():>7.0f} {r['errors']:>4}"
                )
    print("\nthe target process's CPU per call, as a multiple of the bare proxy's (same mode, same connections)")
    for mode in MODES:
        for c in conc:
            if (mode, c, "proxy") not in cells:
                continue
            base = cells[mode, c, "proxy"].per_call_us("proxy")
            parts = [
                f"{t} {cells[mode, c, t].per_call_us(t):,.0f} µs = {cells[mode, c, t].per_call_us(t) / base:.2f}x"
                for t in targets[2:]
                if (mode, c, t) in cells and base
            ]
            print(f"  {mode:<10} conc {c:>2}: proxy {base:,.0f} µs; " + "; ".join(parts))
    print("\ntargets (issue 14), measured with wrk")
    for mode in MODES:
        if (mode, 1, "gateway") in cells:
            gw, d = cells[mode, 1, "gateway"].result, cells[mode, 1, "direct"].result
            add50, add99 = (gw["p50_us"] - d["p50_us"]) / ms, (gw["p99_us"] - d["p99_us"]) / ms
            print(f"  {mode:<10} added latency at 1 connection: p50 {add50:.2f} ms (<= 1 ms: {verdict(add50 <= 1)}), "
                  f"p99 {add99:.2f} ms (<= 3 ms: {verdict(add99 <= 3)})")  # fmt: skip
    top = max(conc)
    for mode in MODES:
        if (mode, top, "gateway") in cells:
            g, p = cells[mode, top, "gateway"].rps, cells[mode, top, "proxy"].rps
            share = g / p if p else 0.0
            print(f"  {mode:<10} {top} connections: gateway {g:,.0f} calls/s = {share:.0%} of the bare proxy's "
                  f"{p:,.0f} (>= 60%: {verdict(share >= 0.6)}; >= 2,500 calls/s: {verdict(g >= 2500)})")  # fmt: skip
    if peer:
        for mode in MODES:
            if (mode, top, peer) in cells:
                ours, theirs = cells[mode, top, "gateway"].rps, cells[mode, top, peer].rps
                print(f"  {mode:<10} {top} connections: gateway {ours:,.0f} calls/s, {peer} {theirs:,.0f} calls/s "
                      f"= {ours / theirs if theirs else float('nan'):.1f}x")  # fmt: skip


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description="one wrk cell: POST a chat completion, print the JSON result")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from bench.gateway import request_body

    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {args.key}"} if args.key else {})
    result, own = run_wrk(ensure_wrk(), args.url, request_body(args.stream), headers, args.connections, args.seconds)
    print(json.dumps({**result, "wrk_cpu_s": own}))


if __name__ == "__main__":
    main()
