"""The dashboards against a real Prometheus scraping the real services: every PromQL expression
in deploy/grafana/dashboards returns data after some traffic, and every SQL panel runs as the
read-only role the set-up creates for Grafana."""

import asyncio
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import yaml

from libs.eventlog.monitor import ProjectionMonitor
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.subjects import publish_subject
from libs.localservers import free_port, stop_process, wait_for_port
from libs.settings import Settings
from libs.setup import GRAFANA_ROLE, set_up
from services.billing.projection import BillingProjection
from tests.stack import ROOT, Stack, eventually, flowplan_replay, usage_event

pytestmark = pytest.mark.connected

PROMETHEUS = Path("/usr/bin/prometheus")
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
CHAT = "/v1/chat/completions"


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.name} / {panel['title']}", target


def promql() -> list[tuple[str, str]]:
    return [(where, t["expr"]) for where, t in panels() if "expr" in t]


def sql() -> list[tuple[str, str]]:
    return [(where, t["rawSql"]) for where, t in panels() if "rawSql" in t]


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """Debian's prometheus package, installed when missing: the test fails, never skips, without it."""
    if not PROMETHEUS.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        steps = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"])
        for step in steps:
            done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.fail(f"could not install prometheus ({' '.join(step)}):\n{done.stderr[-2000:]}", pytrace=False)
    if not PROMETHEUS.exists():
        pytest.fail(f"apt-get installed prometheus but {PROMETHEUS} is missing", pytrace=False)
    return PROMETHEUS


def scrape_config(settings: Settings) -> dict[str, Any]:
    """deploy/prometheus.yml's jobs, pointed at this test's services, scraped every second."""
    deployed = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = []
    for job in deployed["scrape_configs"]:
        port = getattr(settings, f"{job['job_name']}_port")
        jobs.append({"job_name": job["job_name"], "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]})
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": jobs}


@pytest.fixture(scope="module")
def prometheus(prometheus_binary: Path, stack: Stack, workdir: Path) -> Iterator[str]:
    folder = workdir / f"prometheus-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(stack.settings)))  # JSON is YAML
    port = free_port()
    log = open(folder / "prometheus.log", "wb")
    process = subprocess.Popen(
        [str(prometheus_binary), f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
async def grafana_password(settings: Settings) -> str:
    """The set-up run again, now with Grafana's password: it adds the role and changes nothing else."""
    password = uuid.uuid4().hex
    await set_up(msgspec.structs.replace(settings, grafana_db_password=password))
    return password


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, stack: Stack, key: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(stack.gateway_url + CHAT, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def traffic(stack: Stack, http: aiohttp.ClientSession) -> str:
    """Calls admitted and refused, metered usage (one batch refused), a payment, a PAYG call, a
    refund and a poison event. Returns the account whose 5-hour window is over its cap."""
    admin = stack.settings.admin_token
    pro = await stack.create_account("metrics-pro")
    await stack.pay(pro["account_id"], "pro", "20.00")
    assert await call(http, stack, pro["key"], "deepseek/deepseek-chat") == 200
    assert await call(http, stack, pro["key"], "openai/gpt-5-pro") == 403  # model_not_in_plan
    assert await call(http, stack, "sk-ss-v1-not-a-key", "deepseek/deepseek-chat") == 401

    status, payg = await stack.http(
        "POST", "/v1/keys", token=pro["management_key"], json={"name": "payg", "kind": "payg"}
    )
    assert status == 201, payg
    status, body = await stack.http(
        "POST", f"/admin/v1/accounts/{pro['account_id']}/balance", token=admin, json={"amount_usd": "5.00"}
    )
    assert status == 201, body
    assert await call(http, stack, payg["key"], "deepseek/deepseek-chat") == 200

    status, refund = await stack.http("POST", "/v1/refunds", token=pro["management_key"])
    assert status == 202, refund

    async def refunded() -> bool:
        status, body = await stack.http("GET", f"/v1/refunds/{refund['refund_id']}", token=pro["key"])
        assert status == 200, body
        return bool(body["status"] == "succeeded")

    await eventually(refunded)

    full = await stack.create_account("metrics-full")
    heavy = usage_event(full["account_id"], model="z-ai/glm-4.7", input_tokens=1_000_000, output_tokens=200_000)
    assert (await stack.post_usage([heavy]))[0] == 202
    assert (await stack.post_usage([usage_event(full["account_id"], input_tokens=-1)]))[0] == 400

    async def exhausted() -> bool:
        return bool((await stack.usage(full["key"]))["window_5h"]["remaining_flows"] == 0)

    await eventually(exhausted)
    assert await call(http, stack, full["key"], "deepseek/deepseek-chat") == 429  # quota_exhausted

    nc = await stack.nats()
    try:  # an event no projection can decode: it goes to the dead-letter stream
        subject = publish_subject("usage", full["account_id"], "UsageRecorded")
        await nc.jetstream().publish(subject, b"not an event", headers={"Nats-Msg-Id": uuid.uuid4().hex})
    finally:
        await nc.close()
    code, out = await flowplan_replay(stack, "--projection", "keys")  # the replay panel's data
    assert code == 0, out
    return str(full["account_id"])


async def query(http: aiohttp.ClientSession, prometheus: str, expr: str) -> list[Any]:
    async with http.get(f"{prometheus}/api/v1/query", params={"query": expr}) as response:
        body = await response.json()
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])


@pytest.fixture(scope="module")
async def full_account(stack: Stack, http: aiohttp.ClientSession) -> str:
    return await traffic(stack, http)


async def test_every_dashboard_query_returns_data(
    stack: Stack, prometheus: str, http: aiohttp.ClientSession, grafana_password: str, full_account: str
) -> None:
    assert len(DASHBOARDS) >= 4
    expressions = promql()
    assert len(expressions) >= 20
    for where, expr in expressions:
        assert not re.search(r"\$(?!__rate_interval\b)", expr), f"{where}: only $__rate_interval may be templated"

    async def scraped() -> bool:
        up = await query(http, prometheus, "up")
        return len(up) == len(scrape_config(stack.settings)["scrape_configs"]) and all(r["value"][1] == "1" for r in up)

    await eventually(scraped, within=30)
    waiting = list(expressions)
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        results = [await query(http, prometheus, e.replace("$__rate_interval", "1m")) for _, e in waiting]
        waiting = [item for item, result in zip(waiting, results, strict=True) if not result]
        if waiting:
            await asyncio.sleep(1)
    assert waiting == [], "dashboard queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in waiting)

    dead = await query(http, prometheus, 'sum(flowplan_dead_letters_total{projection="quota"})')
    assert float(dead[0]["value"][1]) >= 1  # the poison event was counted
    await sql_panels_run_read_only(stack, grafana_password, full_account)


async def sql_panels_run_read_only(stack: Stack, password: str, full_account: str) -> None:
    conn = await asyncpg.connect(stack.settings.database_url, user=GRAFANA_ROLE, password=password)
    try:
        panels_sql = sql()
        assert len(panels_sql) >= 3
        for where, text in panels_sql:
            assert "$" not in text, f"{where}: SQL panels use no Grafana macros, so that this test can run them"
            rows = await conn.fetch(text)
            if "near their cap" in where:
                near = {(r["account_id"], r["window"]) for r in rows}
                assert (full_account, "5h") in near, rows
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM quota.plan_limits")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM keys.keys LIMIT 1")
    finally:
        await conn.close()


async def test_each_service_labels_its_own_metrics(
    stack: Stack, http: aiohttp.ClientSession, full_account: str
) -> None:
    settings = stack.settings
    expected = {
        ("gateway", settings.gateway_port): [r'flowplan_gateway_calls_total\{.*route="/v1/chat/completions"'],
        ("quota", settings.quota_port): [r'flowplan_flows_consumed_total\{.*plan="pro"', r"flowplan_projection_lag\{"],
        ("simulator", settings.simulator_port): [r"flowplan_simulator_requests_total\{"],
        ("keys", settings.keys_port): [r'flowplan_consumer_pending\{.*projection="keys"'],
        ("billing", settings.billing_port): [r'flowplan_payments_total\{.*plan="pro"'],
        ("ingress", settings.ingress_port): [r'flowplan_events_published_total\{.*type="UsageRecorded"'],
        ("refund", settings.refund_port): [
            r'flowplan_refunds_total\{.*status="succeeded"',
            r"flowplan_refund_amount_usd_total",
        ],
    }
    for (service, port), patterns in expected.items():
        patterns.append(f'target_info\\{{.*service_name="flowplan-{service}"')

        async def served(port: int = port, patterns: list[str] = patterns) -> bool:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            missing = [p for p in patterns if not re.search(p, text)]
            assert not missing, f"{port}: {missing}"
            return True

        await eventually(served, within=20)


async def test_lag_and_pending_show_a_stopped_projection_falling_behind_and_catching_up(
    stack: Stack, full_account: str
) -> None:
    pool = await asyncpg.create_pool(stack.settings.database_url, min_size=1, max_size=2)
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        partitions = stack.settings.partitions
        runner = ProjectionRunner(BillingProjection(), pool, js, stream=stack.settings.stream, partitions=partitions)
        monitor = ProjectionMonitor(runner, pool, js, stream=stack.settings.stream, partitions=partitions)
        stack.billing.stop()
        try:
            assert (await stack.post_usage([usage_event(full_account) for _ in range(3)]))[0] == 202
            behind = {p: r for p, r in (await monitor.refresh()).items() if r != (0, 0)}
            assert len(behind) == 1, behind  # one account: one partition
            [(lag, pending)] = behind.values()
            assert pending >= 3 and lag >= 3
        finally:
            stack.billing.start()

        async def caught_up() -> bool:
            readings = await monitor.refresh()  # without the partitions whose consumers billing still makes
            return len(readings) == partitions and all(r == (0, 0) for r in readings.values())

        await eventually(caught_up)
    finally:
        await nc.close()
        await pool.close()


async def test_a_partition_whose_consumer_is_not_made_yet_is_left_out_not_an_outage(stack: Stack) -> None:
    """Each service's monitor starts before its runner has made the consumers: the first reading
    logged "lag not measured (NotFoundError())" as a warning at every start of the stack."""
    pool = await asyncpg.create_pool(stack.settings.database_url, min_size=1, max_size=2)
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        projection = BillingProjection()
        projection.name = "not-started"  # no consumer of this name exists
        runner = ProjectionRunner(projection, pool, js, stream=stack.settings.stream, partitions=2)
        assert await ProjectionMonitor(runner, pool, js, stream=stack.settings.stream, partitions=2).refresh() == {}
    finally:
        await nc.close()
        await pool.close()


async def test_each_service_tells_where_its_tasks_wait_on_sigusr1_and_goes_on(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A gateway call that got no answer in CI left nothing in any log. A service now logs its
    asyncio tasks' stacks on SIGUSR1, and a failed test's report shows them (tests/conftest.py):
    here a call held by a slow upstream (8,000 tokens at the simulator's 2,000/s) is seen waiting
    in the gateway's forward and in the simulator's generation, and both still answer after."""
    account = await stack.create_account("waits")
    await stack.pay(account["account_id"], "pro", "20.00")
    body = {"model": "deepseek/deepseek-chat", "max_tokens": 8000,
            "messages": [{"role": "user", "content": "a long story [[tokens:8000]]"}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {account['key']}"}
    slow = asyncio.create_task(http.post(stack.gateway_url + CHAT, json=body, headers=headers))
    try:
        await asyncio.sleep(1)
        assert not slow.done()
        report = await asyncio.to_thread(stack.tasks)
    finally:
        slow.cancel()
    services = dict(re.findall(r"^== (\w+) ==\n(.*?)(?=^== |\Z)", report, re.M | re.S))
    assert sorted(services) == sorted(service.name for service in stack.services), report
    assert all("asyncio tasks, on SIGUSR1" in text for text in services.values()), report
    assert re.search(r" services/gateway/pipeline.py:\d+ forward \| waiting on", services["gateway"]), report
    assert re.search(r" services/simulator/common.py:\d+ generation_time > ", services["simulator"]), report
    assert await call(http, stack, account["key"], "deepseek/deepseek-chat") == 200
    async with http.get(f"http://127.0.0.1:{stack.settings.simulator_port}/healthz") as response:
        assert response.status == 200
