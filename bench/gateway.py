"""Gateway part of `make bench`: what the gateway adds to a call, side by side in one run.

For non-streamed and streamed chat completions at concurrency 1, 16 and 64, the same closed-loop
load goes to three targets in turn:
  * the upstream simulator, directly (unpaced: FLOWPLAN_SIMULATOR_TOKENS_PER_S=0)
  * a bare aiohttp pass-through proxy in front of it (no auth, no checks: the floor of any Python proxy)
  * the gateway in front of it, with every check it makes (key, quota.check over NATS, usage recorded)
and the table shows requests/s, p50 and p99 of each, the latency the gateway adds over the direct
call, and the gateway's throughput as a share of the bare proxy's.

The same cells also go to a gateway whose upstream speaks only messages (FLOWPLAN_UPSTREAMS
"protocols": ["messages"]), so every chat call is translated chat -> messages and back, and a
table puts it beside the passed-through calls. Likewise for the Responses API: the same
Responses calls (RESPONSES_MODEL) go to the simulator directly, to the gateway, whose OpenAI
upstream speaks Responses (passed through), and to the translating gateway, whose OpenAI upstream
speaks only chat (translated Responses -> chat and back).

With `--gateway-before DIR` (a checkout of an earlier commit, e.g. `git archive <commit> | tar -x
-C DIR`), the same chat cells also go to that code's gateway, started the same way on the same
stack, and a table puts the two side by side: a refactor's cost, measured in one run.

The same cells also go to a second gateway process in the previous design's mode
(FLOWPLAN_USAGE_DURABILITY=queue: usage published after the response, lost if the gateway is
killed), and a table compares it with the durable default (ack: a call's usage is stored in
JetStream before its last byte), as ratios.

The gateway and quota run with a bench plans file (every plan: rpm 1,000,000 and huge Flow caps)
so that RPM and the windows never refuse; every call is admitted and metered, which is checked at
the end (UsageRecorded events in JetStream, the account's window in quota).

The load generator runs in a child process of its own (aiohttp on uvloop), never in the bench's
event loop. Also runnable alone: `python -m bench.gateway proxy --port P --upstream URL` and
`python -m bench.gateway load --url URL --concurrency C ...` (prints one JSON line).
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import uvloop
from aiohttp import web
from nats.aio.client import Client

from bench import litellm as bench_litellm
from bench import profile as bench_profile
from bench import wrk as bench_wrk
from bench.procstat import cpu_of, pct
from libs.localservers import free_port, wait_for_port
from libs.settings import Settings, settings_environ
from proto.v1 import QuotaStatus, QuotaStatusRequest, encode, subjects
from tests.stack import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
PLANS = ROOT / "libs" / "catalog" / "plans.json"
MODEL = "deepseek/deepseek-chat"
MAX_TOKENS = 16
CONCURRENCY = (1, 16, 64)
WRK_CONCURRENCY = (1, 64)
BUDGET_MODEL = "deepseek/deepseek-chat"
MODES = ("non-stream", "stream")
TARGETS = ("direct", "proxy", "gateway")
QUEUED = "gateway-queue"
"""The gateway in the previous, queued design (FLOWPLAN_USAGE_DURABILITY=queue), for the comparison."""
TRANSLATED = "gateway-translated"
"""A gateway whose upstream speaks only messages: the same chat calls, translated both ways."""
RESPONSES_MODEL = "openai/gpt-5-mini"
RESPONSES_TARGETS = ("responses-direct", "responses-passed", "responses-translated")
"""The Responses cells: the simulator directly, the gateway passing them through, the gateway translating."""
BEFORE = "gateway-before"
"""The gateway of an earlier checkout (--gateway-before), on the same stack."""
MEASURED = (*TARGETS, QUEUED, TRANSLATED, *RESPONSES_TARGETS)
GATEWAYS = ("gateway", QUEUED, TRANSLATED, BEFORE, "responses-passed", "responses-translated")
BENCH_RPM = 1_000_000
BENCH_FLOWS = "1000000000"


def request_body(stream: bool, protocol: str = "chat") -> bytes:
    ask = f"hello there [[tokens:{MAX_TOKENS}]]"  # an exact length
    body: dict[str, Any] = (
        {"model": RESPONSES_MODEL, "max_output_tokens": MAX_TOKENS, "input": ask}
        if protocol == "responses"
        else {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": ask}]}
    )
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def write_bench_plans(path: Path) -> Path:
    """libs/catalog/plans.json with rpm 1,000,000 and caps of 10^9 Flows for every plan."""
    plans = json.loads(PLANS.read_text())
    for plan in plans["plans"]:
        plan["rpm"] = BENCH_RPM
        plan["window_5h_flows"] = plan["weekly_flows"] = plan["monthly_flows"] = BENCH_FLOWS
    path.write_text(json.dumps(plans, indent=2))
    return path


def postgres_pids(data_dir: Path) -> list[int]:
    """The bench's Postgres: its postmaster (from postmaster.pid) and every process it started (one
    backend per connection, the writers). Not the other Postgres servers on the machine."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return process_tree(postmaster)


def process_tree(root: int) -> list[int]:
    """root and all its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


# -- the bare pass-through proxy (a child process) -------------------------------------------

SESSION = web.AppKey("session", aiohttp.ClientSession)


def proxy_app(upstream: str) -> web.Application:
    """Forwards any POST to upstream + path with one shared ClientSession; no auth, no checks."""
    app = web.Application(client_max_size=32 * 1024 * 1024)

    async def session_ctx(app: web.Application) -> Any:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
            auto_decompress=False,
        )
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        async with request.app[SESSION].post(upstream + request.path, data=body, headers=headers) as response:
            content_type = response.headers.get("content-type", "application/json")
            if content_type.startswith("text/event-stream"):
                out = web.StreamResponse(
                    status=response.status, headers={"content-type": content_type, "cache-control": "no-cache"}
                )
                await out.prepare(request)
                async for chunk in response.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            payload = await response.read()
            return web.Response(body=payload, status=response.status, headers={"content-type": content_type})

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{path:.*}", forward)
    return app


async def serve_proxy(port: int, upstream: str) -> None:
    runner = web.AppRunner(proxy_app(upstream.rstrip("/")), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- the load generator (a child process) ----------------------------------------------------


async def generate_load(
    url: str,
    key: str,
    concurrency: int,
    stream: bool,
    seconds: float,
    warmup: float,
    watch: dict[str, list[int]],
    protocol: str = "chat",
) -> dict[str, Any]:
    """Closed loop: `concurrency` clients back to back. Calls that complete within the `seconds`
    after the warm-up are measured; the CPU of the watched processes is read over the same window."""
    body = request_body(stream, protocol)
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    latencies: list[float] = []
    firsts: list[float] = []
    statuses: dict[str, int] = {}
    totals = {"ok": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        begin = time.perf_counter()
        measure_from, stop_at = begin + warmup, begin + warmup + seconds

        async def client() -> None:
            while (t0 := time.perf_counter()) < stop_at:
                first = t0
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        if stream:
                            first = 0.0
                            async for _ in response.content.iter_any():
                                if not first:
                                    first = time.perf_counter()
                        else:
                            await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError) as exc:
                    name = type(exc).__name__
                    statuses[name] = statuses.get(name, 0) + 1
                    totals["errors"] += 1
                    continue
                t1 = time.perf_counter()
                if status == 200:
                    totals["ok"] += 1
                else:
                    totals["errors"] += 1
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                if measure_from <= t1 < stop_at and status == 200:
                    latencies.append(t1 - t0)
                    firsts.append((first or t1) - t0)

        async def cpu_window() -> dict[str, float]:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            before = cpu_of(watch)
            own, wall = time.process_time(), time.perf_counter()
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            wall = time.perf_counter() - wall
            used = {name: (spent - before[name]) / wall for name, spent in cpu_of(watch).items()}
            used["loadgen"] = (time.process_time() - own) / wall
            return used

        sampler = asyncio.create_task(cpu_window())
        await asyncio.gather(*(client() for _ in range(concurrency)))
        cpu = await sampler
    latencies.sort()
    firsts.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "ttfb_p50": pct(firsts, 0.5),
        "ttfb_p99": pct(firsts, 0.99),
        "measured": len(latencies),
        "ok": totals["ok"],
        "errors": totals["errors"],
        "statuses": statuses,
        "cpu": cpu,
    }


# -- the part run from bench/__main__ --------------------------------------------------------


class CheckoutProcess(ServiceProcess):
    """A service run from another checkout of the code (its own folder), with this one's Python."""

    def __init__(self, root: Path, name: str, env: dict[str, str], port: int, log_dir: Path) -> None:
        super().__init__(name, env, port, log_dir)
        self.root = root.resolve()

    def start(self, extra_env: dict[str, str] | None = None, *, wait: bool = True) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, **(extra_env or {}), "PYTHONPATH": str(self.root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"], env=env, stdout=log, stderr=log, cwd=self.root
        )
        if wait:
            wait_for_port(self.port, timeout=60, process=self.process)


class GatewayStack:
    """Simulator (unpaced), keys, quota, ingress and gateway with the bench plans, plus the bare
    proxy: all child processes, on free ports, on the NATS and Postgres the bench started."""

    def __init__(self, settings: Settings, work: Path, before: Path | None = None) -> None:
        self.work = work
        self.settings = msgspec.structs.replace(
            settings,
            ingress_port=free_port(),
            quota_port=free_port(),
            keys_port=free_port(),
            gateway_port=free_port(),
            simulator_port=free_port(),
        )
        s = self.settings
        self.simulator_url = f"http://127.0.0.1:{s.simulator_port}"
        self.plans_path = write_bench_plans(work / "bench-plans.json")
        env = {
            **settings_environ(s),
            "FLOWPLAN_SIMULATOR_TOKENS_PER_S": "0",
            "FLOWPLAN_SIMULATOR_FIRST_TOKEN_MS": "0",
            "FLOWPLAN_UPSTREAMS": json.dumps(
                {
                    "default": {"url": self.simulator_url, "key": "bench"},
                    "openai": {"url": self.simulator_url, "key": "bench", "protocols": ["chat", "responses"]},
                }
            ),
            "FLOWPLAN_PLANS_PATH": str(self.plans_path),
            "FLOWPLAN_LOG_LEVEL": "WARNING",
        }
        self.services = {
            name: ServiceProcess(name, env, getattr(s, f"{name}_port"), work)
            for name in ("simulator", "keys", "quota", "billing", "refund", "ingress", "gateway")
        }
        queued_port = free_port()
        queued_env = {**env, "FLOWPLAN_GATEWAY_PORT": str(queued_port), "FLOWPLAN_USAGE_DURABILITY": "queue"}
        self.services[QUEUED] = ServiceProcess("gateway", queued_env, queued_port, work)
        self.services[QUEUED].log_path = work / f"{QUEUED}.log"
        translated_port = free_port()
        messages_only = json.dumps(
            {  # the simulator's /any serves deepseek's models in messages too
                "default": {"url": f"{self.simulator_url}/any", "key": "bench", "protocols": ["messages"]},
                "openai": {"url": self.simulator_url, "key": "bench", "protocols": ["chat"]},
            }
        )
        translated_env = {**env, "FLOWPLAN_GATEWAY_PORT": str(translated_port), "FLOWPLAN_UPSTREAMS": messages_only}
        self.services[TRANSLATED] = ServiceProcess("gateway", translated_env, translated_port, work)
        self.services[TRANSLATED].log_path = work / f"{TRANSLATED}.log"
        self.proxy_port = free_port()
        self.proxy: subprocess.Popen[bytes] | None = None
        self.urls = {
            "direct": f"{self.simulator_url}/v1/chat/completions",
            "proxy": f"http://127.0.0.1:{self.proxy_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{s.gateway_port}/v1/chat/completions",
            QUEUED: f"http://127.0.0.1:{queued_port}/v1/chat/completions",
            TRANSLATED: f"http://127.0.0.1:{translated_port}/v1/chat/completions",
            "responses-direct": f"{self.simulator_url}/v1/responses",
            "responses-passed": f"http://127.0.0.1:{s.gateway_port}/v1/responses",
            "responses-translated": f"http://127.0.0.1:{translated_port}/v1/responses",
        }
        self.pids = {"responses-passed": "gateway", "responses-translated": TRANSLATED}
        """The process behind a target that shares another's."""
        if before is not None:
            before_port = free_port()
            before_env = {**env, "FLOWPLAN_GATEWAY_PORT": str(before_port)}
            self.services[BEFORE] = CheckoutProcess(before, "gateway", before_env, before_port, work)
            self.services[BEFORE].log_path = work / f"{BEFORE}.log"
            self.urls[BEFORE] = f"http://127.0.0.1:{before_port}/v1/chat/completions"

    def start(self) -> None:
        for service in self.services.values():
            service.start()
        log = open(self.work / "bench-proxy.log", "ab")
        upstream = self.simulator_url
        self.proxy = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway", "proxy", "--port", str(self.proxy_port), "--upstream", upstream],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        wait_for_port(self.proxy_port, process=self.proxy)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
            self.proxy = None
        gateways_first = (BEFORE, TRANSLATED, QUEUED, "gateway", "ingress", "billing", "refund", "quota", "keys")
        for name in (*gateways_first, "simulator"):
            if name in self.services:
                self.services[name].stop()

    def pid(self, name: str) -> int:
        name = self.pids.get(name, name)
        process = self.proxy if name == "proxy" else self.services[name].process
        assert process is not None
        return process.pid

    async def admin(self, session: aiohttp.ClientSession, path: str, body: dict[str, str]) -> dict[str, Any]:
        """POST to the admin API, retried while a just-created account is not yet known (404/503)."""
        url = f"http://127.0.0.1:{self.settings.ingress_port}{path}"
        headers = {"Authorization": f"Bearer {self.settings.admin_token}"}
        deadline = time.monotonic() + 30
        while True:
            async with session.post(url, json=body, headers=headers) as response:
                reply = await response.json(content_type=None)
                if response.status == 201:
                    return dict(reply)
                if time.monotonic() > deadline or response.status not in (404, 503):
                    raise RuntimeError(f"POST {path}: {response.status} {reply}")
            await asyncio.sleep(0.1)

    async def quota_status(self, nc: Client, account_id: str) -> QuotaStatus:
        reply = await nc.request(subjects.QUOTA_STATUS, encode(QuotaStatusRequest(account_id=account_id)), timeout=5)
        return msgspec.json.decode(reply.data, type=QuotaStatus)

    async def create_account(self, nc: Client) -> tuple[str, str, int]:
        """One account on Pro (an admin payment): its id, its key, and the calls made to see it admitted."""
        async with aiohttp.ClientSession() as session:
            account = await self.admin(session, "/admin/v1/accounts", {"name": "bench-gateway"})
            account_id, key = account["account_id"], account["key"]
            payment = {"plan": "pro", "amount_usd": "20.00", "payment_ref": f"bench-{uuid.uuid4().hex}"}
            await self.admin(session, f"/admin/v1/accounts/{account_id}/payments", payment)
            deadline = time.monotonic() + 30
            while (status := await self.quota_status(nc, account_id)).plan != "pro" or not status.known:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"quota never saw the Pro payment of {account_id}: {status}")
                await asyncio.sleep(0.1)
            probes = 0
            headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
            while True:
                async with session.post(self.urls["gateway"], data=request_body(False), headers=headers) as r:
                    reply = await r.read()
                    probes += r.status == 200
                    if r.status == 200:
                        return account_id, key, probes
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway does not admit the bench account: {r.status} {reply[:300]!r}")
                await asyncio.sleep(0.1)


async def measure(
    url: str,
    key: str,
    concurrency: int,
    stream: bool,
    seconds: float,
    warmup: float,
    watch: dict[str, list[int]],
    protocol: str = "chat",
) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.gateway", "load", "--url", url, "--key", key, "--protocol", protocol]
    command += ["--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup)]
    command += ["--watch", json.dumps(watch)] + (["--stream"] if stream else [])
    child = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, cwd=ROOT)
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"load generator exited with {child.returncode}")
    return dict(json.loads(out))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway-seconds", type=float, default=4.0, help="measured seconds per gateway cell")
    parser.add_argument("--gateway-warmup", type=float, default=0.5, help="warm-up seconds per gateway cell")
    parser.add_argument(
        "--gateway-before", type=Path, default=None,
        help="a checkout of an earlier commit whose gateway the same chat cells also go to, side by side",
    )  # fmt: skip
    loadgen = "gateway part: wrk (C; apt-get installs it if missing), the Python one, or both"
    parser.add_argument("--loadgen", choices=("both", "wrk", "python"), default="both", help=loadgen)
    parser.add_argument("--wrk-seconds", type=float, default=5.0, help="measured seconds per wrk cell")
    parser.add_argument("--wrk-warmup", type=float, default=1.0, help="warm-up seconds per wrk cell")
    peer = "litellm: LiteLLM's proxy too (installed under .flowplan/), and the budget test"
    parser.add_argument("--peer", choices=("none", "litellm"), default="none", help=peer)
    parser.add_argument("--profile", action="store_true",
                        help="gateway part: py-spy of the gateway under wrk and of quota under quota.check; "
                             "projections part: cProfile of quota's apply")  # fmt: skip
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-connections", type=int, default=64,
                        help="wrk's connections while the gateway is profiled (1: a call alone)")  # fmt: skip


async def run(
    args: argparse.Namespace, work: Path, settings: Settings, servers: Callable[[], dict[str, list[int]]]
) -> None:
    """Start the gateway stack on the bench's NATS and Postgres (and the peer, if asked for), measure
    every cell with the Python load generator and with wrk, print the tables. `servers()` gives the
    pids of the bench's NATS and Postgres at the time it is called (Postgres's backends come and go)."""
    seconds, warmup = args.gateway_seconds, args.gateway_warmup
    loadgens = ("python", "wrk") if args.loadgen == "both" else (args.loadgen,)
    wrk = bench_wrk.ensure_wrk() if "wrk" in loadgens else ""
    peer = bench_litellm.LiteLLM(work, ROOT / ".flowplan") if args.peer == "litellm" else None
    if peer is not None:
        peer.install()
    stack = GatewayStack(settings, work, args.gateway_before)
    nc = await nats.connect(settings.nats_url)
    results: dict[tuple[str, int, str], dict[str, Any]] = {}
    cells: dict[tuple[str, int, str], bench_wrk.Cell] = {}
    budget: list[bench_litellm.BudgetOutcome] = []
    try:
        stack.start()
        if peer is not None:
            peer.start(stack.simulator_url, bench_litellm.catalog_prices(MODEL, BUDGET_MODEL))
            stack.urls["litellm"] = peer.url + "/v1/chat/completions"
        account_id, key, probes = await stack.create_account(nc)
        settled = await settle(nc, settings)
        print(
            f"\nflowplan gateway bench: {os.cpu_count()} cores, Python {sys.version.split()[0]}; load generators: "
            f"{', '.join(loadgens)}.\n"
            f"  plans: {stack.plans_path} = libs/catalog/plans.json with rpm {BENCH_RPM:,} and {int(BENCH_FLOWS):,} "
            "Flows per window for every plan,\n"
            "         so RPM and quota never refuse (every gateway call still makes every check).\n"
            f"  upstream: the simulator, unpaced (FLOWPLAN_SIMULATOR_TOKENS_PER_S=0, first token 0 ms); "
            f"{MODEL}, max_tokens {MAX_TOKENS}.\n"
            f"  account {account_id} on Pro (admin payment); projections caught up with the log in {settled:.1f} s.",
            flush=True,
        )

        def watch(target: str) -> dict[str, list[int]]:
            """The processes whose CPU a cell reports: the servers, every service, and the target."""
            pids = servers()
            pids |= {name: [stack.pid(name)] for name in ("simulator", "quota", "keys", "ingress", "billing", "refund")}
            if target == "litellm" and peer is not None:
                pids[target] = peer.pids()
            elif target not in ("direct", "responses-direct"):
                pids[target] = [stack.pid(target)]
            return pids

        if "python" in loadgens:
            print(f"  Python load generator: {seconds:g} s per cell after a {warmup:g} s warm-up, closed loop, "
                  "in its own process.", flush=True)  # fmt: skip
            for mode in MODES:
                for concurrency in CONCURRENCY:
                    for target in (t for t in (*MEASURED, BEFORE) if t in stack.urls):
                        protocol = "responses" if target in RESPONSES_TARGETS else "chat"
                        results[mode, concurrency, target] = await measure(
                            stack.urls[target], key, concurrency, mode == "stream", seconds, warmup, watch(target),
                            protocol,
                        )  # fmt: skip
        if wrk:
            targets = (*TARGETS, *((BEFORE,) if BEFORE in stack.urls else ()), *(("litellm",) if peer else ()))
            print(f"  wrk: {args.wrk_seconds:g} s per cell after a {args.wrk_warmup:g} s warm-up, connections "
                  f"{', '.join(map(str, WRK_CONCURRENCY))}, targets {', '.join(targets)}.", flush=True)  # fmt: skip
            for mode in MODES:
                for concurrency in WRK_CONCURRENCY:
                    for target in targets:
                        auth = peer.master_key if target == "litellm" and peer is not None else key
                        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
                        # LiteLLM answers 64 connections in seconds each: a cell long enough to count its calls
                        slow = target == "litellm" and concurrency > 1
                        length = max(args.wrk_seconds, 15.0) if slow else args.wrk_seconds
                        cells[mode, concurrency, target] = await asyncio.to_thread(
                            bench_wrk.measure, wrk, stack.urls[target], request_body(mode == "stream"), headers,
                            concurrency, length, max(args.wrk_warmup, 5.0) if slow else args.wrk_warmup, watch(target),
                        )  # fmt: skip
        if args.profile:
            check_account, _, _ = await stack.create_account(nc)  # not the metered account: its reservations linger
            await bench_profile.gateway_and_quota(
                wrk or bench_wrk.ensure_wrk(), stack.urls["gateway"], key, stack.pid("gateway"), stack.pid("quota"),
                settings.nats_url, check_account, args.profile_seconds, work, args.profile_connections,
            )  # fmt: skip
        admitted = probes + sum(r["ok"] for (_, _, t), r in results.items() if t in GATEWAYS)
        admitted += sum(c.ok for (_, _, t), c in cells.items() if t in GATEWAYS)
        admitted += bench_profile.ADMITTED
        metering = await check_metering(nc, stack, settings, account_id, admitted)
        if peer is not None:
            budget = await bench_litellm.budget_test(stack, peer, nc, BUDGET_MODEL)
    finally:
        await nc.close()
        if peer is not None:
            peer.stop()
        stack.stop()
    if results:
        report(results)
    if cells:
        bench_wrk.report(cells, "litellm" if peer is not None else None)
    gateway_errors = sum(r["errors"] for (_, _, t), r in results.items() if t in GATEWAYS)
    gateway_errors += sum(c.result["errors"] for (_, _, t), c in cells.items() if t in GATEWAYS)
    report_metering(metering, gateway_errors)
    if budget:
        bench_litellm.report_budget(budget)


async def settle(nc: Client, settings: Settings, within_s: float = 120.0) -> float:
    """Wait until every projection has applied the whole log (after a core part, the new keys and
    quota processes have its events to go through), so that no catch-up runs during a cell."""
    js, started = nc.jetstream(), time.monotonic()
    while time.monotonic() - started < within_s:
        consumers = await js.consumers_info(settings.stream)
        if all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers):
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def usage_events(nc: Client, settings: Settings, account_id: str) -> int:
    """UsageRecorded events of the (new) account stored in the event log."""
    subject = f"flowplan.p.*.usage.{account_id}.UsageRecorded"
    info = await nc.jetstream().stream_info(settings.stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def check_metering(
    nc: Client, stack: GatewayStack, settings: Settings, account_id: str, admitted: int
) -> dict[str, Any]:
    """Wait (a while) for every admitted call's usage event, and for quota to have applied them all."""
    deadline = time.monotonic() + 30
    while (stored := await usage_events(nc, settings, account_id)) < admitted:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    while (status := await stack.quota_status(nc, account_id)).window_5h.reserved_flows_micros > 0:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return {"admitted": admitted, "stored": stored, "window": status.window_5h}


def report(results: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    ms = 1000.0
    head = (
        f"{'':<10} {'conc':>4} | {'direct: req/s':>13} {'p50':>6} {'p99':>6} | {'bare proxy: req/s':>17} "
        f"{'p50':>6} {'p99':>6} | {'gateway: req/s':>14} {'p50':>6} {'p99':>6} | {'gw added p50':>12} "
        f"{'p99':>6} | {'gw/proxy':>8}"
    )
    print(f"\nlatencies in ms (streams: to the last byte); 'gw added' = gateway - direct\n{head}\n{'-' * len(head)}")
    for mode in MODES:
        for c in CONCURRENCY:
            d, p, g = (results[mode, c, t] for t in TARGETS)
            print(
                f"{mode:<10} {c:>4} | {d['rps']:>13,.0f} {d['p50'] * ms:>6.2f} {d['p99'] * ms:>6.2f} | "
                f"{p['rps']:>17,.0f} {p['p50'] * ms:>6.2f} {p['p99'] * ms:>6.2f} | "
                f"{g['rps']:>14,.0f} {g['p50'] * ms:>6.2f} {g['p99'] * ms:>6.2f} | "
                f"{(g['p50'] - d['p50']) * ms:>12.2f} {(g['p99'] - d['p99']) * ms:>6.2f} | "
                f"{g['rps'] / p['rps'] if p['rps'] else float('nan'):>8.0%}"
            )
    print("\nstreams, time to first byte in ms (p50 / p99)")
    for c in CONCURRENCY:
        cells = "   ".join(
            f"{t}: {results['stream', c, t]['ttfb_p50'] * ms:.2f} / {results['stream', c, t]['ttfb_p99'] * ms:.2f}"
            for t in TARGETS
        )
        print(f"  conc {c:>2}   {cells}")

    print("\nCPU cores used during the measured seconds at concurrency 64 (of the machine's", os.cpu_count(), "cores)")
    for mode in MODES:
        for t in TARGETS:
            cpu = results[mode, 64, t]["cpu"]
            busy = sorted(((v, k) for k, v in cpu.items() if v >= 0.01), reverse=True)
            listed = ", ".join(f"{k} {v:.2f}" for v, k in busy)
            print(f"  {mode:<10} {t:<8} total {sum(cpu.values()):.2f}: {listed}")

    durability(results)
    translation(results)

    print("\nerrors (non-200 responses and failed requests, warm-up included)")
    failures = [(key, r) for key, r in results.items() if r["errors"]]
    if not failures:
        print(f"  none: {sum(r['ok'] for r in results.values()):,} calls, every one answered 200")
    for (mode, c, t), r in failures:
        print(f"  {mode} conc {c} {t}: {r['errors']:,} errors {r['statuses']}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print("\ntargets")
    for mode in MODES:
        d, g = results[mode, 1, "direct"], results[mode, 1, "gateway"]
        add50, add99 = (g["p50"] - d["p50"]) * ms, (g["p99"] - d["p99"]) * ms
        print(
            f"  {mode:<10} added latency at concurrency 1: p50 {add50:.2f} ms (<= 1 ms: {verdict(add50 <= 1)}), "
            f"p99 {add99:.2f} ms (<= 3 ms: {verdict(add99 <= 3)})"
        )
    for mode in MODES:
        best_gw = max(results[mode, c, "gateway"]["rps"] for c in CONCURRENCY)
        best_proxy = max(results[mode, c, "proxy"]["rps"] for c in CONCURRENCY)
        share = best_gw / best_proxy if best_proxy else 0.0
        print(
            f"  {mode:<10} max throughput: gateway {best_gw:,.0f}/s = {share:.0%} of the bare proxy's "
            f"{best_proxy:,.0f}/s (>= 60%: {verdict(share >= 0.6)})"
        )
    for mode in MODES:
        rps = results[mode, 64, "gateway"]["rps"]
        print(
            f"  {mode:<10} admitted calls/s through one gateway process at concurrency 64: {rps:,.0f} "
            f"(>= 1,500: {verdict(rps >= 1500)})"
        )


def report_metering(metering: dict[str, Any], gateway_errors: int) -> None:
    window = metering["window"]
    metered = metering["stored"] >= metering["admitted"]
    print(
        f"\nmetering: {metering['admitted']:,} calls answered 200 by the gateway processes (every load generator), "
        f"{metering['stored']:,} UsageRecorded events stored for the account in JetStream; quota's 5-hour window: "
        f"{window.used_flows_micros / 1e6:,.2f} Flows used, {window.reserved_flows_micros / 1e6:,.2f} still reserved, "
        f"{gateway_errors} gateway errors -> "
        f"{'OK' if metered and gateway_errors == 0 and metering['admitted'] > 0 else 'NOT OK'}"
    )


def durability(results: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    """Durable usage (ack: stored before the call's last byte) beside the previous queued design."""
    ms = 1000.0
    print(
        "\ndurable usage (ack, the default) vs the previous queued design (queue), same run; "
        "'added' = gateway - direct, in ms"
    )
    for mode in MODES:
        d, a, q = results[mode, 1, "direct"], results[mode, 1, "gateway"], results[mode, 1, QUEUED]
        for label, key in (("p50", "p50"), ("p99", "p99")):
            ack, queue = (a[key] - d[key]) * ms, (q[key] - d[key]) * ms
            print(
                f"  {mode:<10} conc  1 added {label}: ack {ack:6.2f}  queue {queue:6.2f}  "
                f"ack/queue {ack / queue if queue > 0 else float('nan'):5.2f}x  (ack - queue {ack - queue:+.2f} ms)"
            )
    for mode in MODES:
        for c in CONCURRENCY:
            ack, queue = results[mode, c, "gateway"]["rps"], results[mode, c, QUEUED]["rps"]
            print(
                f"  {mode:<10} conc {c:>2} throughput: ack {ack:6,.0f}/s  queue {queue:6,.0f}/s  "
                f"ack/queue {ack / queue if queue else float('nan'):5.2f}x"
            )


def translation(results: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    """The same calls two ways, same run; 'added' = gateway - direct, in ms: chat calls passed
    through and translated chat -> messages -> chat (the upstream speaks only messages), Responses
    calls passed through and translated Responses -> chat -> Responses (the upstream speaks only
    chat), and, with --gateway-before, the chat calls through this gateway and the earlier one's."""
    tables = [
        ("chat: passed through (upstream speaks chat) vs translated (upstream speaks only messages)",
         ("direct", "gateway", TRANSLATED), ("passed", "translated")),
        ("Responses: passed through (upstream speaks Responses) vs translated (upstream speaks only chat)",
         RESPONSES_TARGETS, ("passed", "translated")),
        ("chat: this checkout's gateway ('now') vs the earlier checkout's ('before', --gateway-before)",
         ("direct", "gateway", BEFORE), ("now", "before")),
    ]  # fmt: skip
    for title, (direct, first, second), names in tables:
        if any(key[2] == second for key in results):
            print(f"\n{title}, same run")
            side_by_side(results, direct, first, second, names)


def side_by_side(
    results: dict[tuple[str, int, str], dict[str, Any]], direct: str, first: str, second: str, names: tuple[str, str]
) -> None:
    ms, (one, two) = 1000.0, names
    for mode in MODES:
        for c in CONCURRENCY:
            d, a, t = results[mode, c, direct], results[mode, c, first], results[mode, c, second]
            print(
                f"  {mode:<10} conc {c:>2}: added p50 {one} {(a['p50'] - d['p50']) * ms:6.2f} "
                f"{two} {(t['p50'] - d['p50']) * ms:6.2f} | added p99 {one} {(a['p99'] - d['p99']) * ms:6.2f} "
                f"{two} {(t['p99'] - d['p99']) * ms:6.2f} | throughput {one} {a['rps']:6,.0f}/s "
                f"{two} {t['rps']:6,.0f}/s ({two}/{one} {t['rps'] / a['rps'] if a['rps'] else float('nan'):.0%}) | "
                f"gateway CPU ms/call {one} {cpu_per_call(a, first):5.2f} {two} {cpu_per_call(t, second):5.2f}"
            )


def cpu_per_call(result: dict[str, Any], target: str) -> float:
    """The gateway process's CPU milliseconds per measured call: what a busy machine disturbs
    least (the other processes slow the calls, not the work each one takes)."""
    rps = result["rps"]
    return float(result["cpu"].get(target, 0.0)) / rps * 1000.0 if rps else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="bench.gateway helpers: the bare proxy and the load generator")
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="serve the bare pass-through proxy")
    proxy.add_argument("--port", type=int, required=True)
    proxy.add_argument("--upstream", required=True)
    load = commands.add_parser("load", help="closed-loop load; prints one JSON line")
    load.add_argument("--url", required=True)
    load.add_argument("--key", default="")
    load.add_argument("--concurrency", type=int, default=1)
    load.add_argument("--seconds", type=float, default=4.0)
    load.add_argument("--warmup", type=float, default=0.5)
    load.add_argument("--stream", action="store_true")
    load.add_argument("--protocol", choices=("chat", "responses"), default="chat")
    load.add_argument("--watch", default="{}", help='JSON {"name": [pid, ...]}: processes whose CPU to report')
    args = parser.parse_args()
    if args.command == "proxy":
        uvloop.run(serve_proxy(args.port, args.upstream))
    else:
        result = uvloop.run(
            generate_load(
                args.url,
                args.key,
                args.concurrency,
                args.stream,
                args.seconds,
                args.warmup,
                json.loads(args.watch),
                args.protocol,
            )
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
