"""Real servers for the tests: nats-server and Postgres on free ports, services as child processes.

Nothing here fakes NATS or Postgres. Each test module gets its own nats-server and its
own database; the Postgres server is shared by the session.
"""

import asyncio
import atexit
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
from nats.aio.client import Client

from libs import taskdump
from libs.localservers import free_port, stop_process, wait_for_port
from libs.settings import Settings, settings_environ

ROOT = Path(__file__).resolve().parent.parent


STARTED: list["subprocess.Popen[bytes]"] = []
"""Every service process the tests started: whatever a failing test left running is stopped at exit."""


@atexit.register
def _stop_leftovers() -> None:
    for process in STARTED:
        if process.poll() is None:
            stop_process(process, graceful=False)


class ServiceProcess:
    def __init__(self, name: str, env: dict[str, str], port: int, log_dir: Path) -> None:
        self.name, self.env, self.port, self.log_path = name, env, port, log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None, *, wait: bool = True) -> None:
        """Start the service; unless told not to, return once it listens."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        STARTED.append(self.process)
        if wait:
            wait_for_port(self.port, timeout=60, process=self.process)

    def kill(self) -> None:
        stop_process(self.process, graceful=False)
        self.process = None

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Stack:
    """One test module's flowplan: settings, services, and clients to talk to them."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        env = {**settings_environ(settings), "FLOWPLAN_LOG_LEVEL": "INFO"}
        self.quota = ServiceProcess("quota", env, settings.quota_port, log_dir)
        self.keys = ServiceProcess("keys", env, settings.keys_port, log_dir)
        self.billing = ServiceProcess("billing", env, settings.billing_port, log_dir)
        self.refund = ServiceProcess("refund", env, settings.refund_port, log_dir)
        self.gateway = ServiceProcess("gateway", env, settings.gateway_port, log_dir)
        self.simulator = ServiceProcess("simulator", env, settings.simulator_port, log_dir)
        self.gateway_url = f"http://127.0.0.1:{settings.gateway_port}"
        self.ingress = ServiceProcess("ingress", env, settings.ingress_port, log_dir)
        self.base = f"http://127.0.0.1:{settings.ingress_port}"
        self.console = ServiceProcess("console", env, settings.console_port, log_dir)
        self.console_url = f"http://127.0.0.1:{settings.console_port}"

    @property
    def services(self) -> list[ServiceProcess]:
        """Every service, in the order they start (the ones others call first)."""
        return [self.simulator, self.quota, self.keys, self.billing, self.refund, self.console, self.ingress,
                self.gateway]  # fmt: skip

    def log_ends(self, lines: int = 30) -> str:
        """The last lines of each service's log: what a failed test's report shows of them."""
        ends = []
        for service in self.services:
            tail = service.log().splitlines()[-lines:] if service.log_path.exists() else []
            ends.append(f"== {service.name} ==\n" + "\n".join(line[:400] for line in tail))
        return "\n".join(ends)

    def tasks(self, timeout_s: float = 3.0) -> str:
        """Where each running service's asyncio tasks wait, as it logs on SIGUSR1 (libs/taskdump.py):
        what a failed test's report shows after the logs' ends, so that a call that got no answer
        tells where it waits (a CI run's gateway call hung with nothing in any log)."""
        asked = {}
        for service in self.services:
            if service.process is not None and service.process.poll() is None:
                asked[service] = service.log_path.stat().st_size
                service.process.send_signal(signal.SIGUSR1)
        reports, deadline = {}, time.monotonic() + timeout_s
        while asked and time.monotonic() < deadline:
            time.sleep(0.05)
            for service, offset in list(asked.items()):
                with open(service.log_path, "rb") as log:
                    log.seek(offset)
                    written = log.read().decode(errors="replace")
                if taskdump.END in written:
                    reports[service.name] = written[: written.index(taskdump.END)].rstrip()
                    del asked[service]
        reports |= {service.name: f"(no report within {timeout_s:g} s)" for service in asked}
        return "\n".join(f"== {name} ==\n{report}" for name, report in reports.items())

    # -- HTTP ---------------------------------------------------------------------------

    async def http(
        self, method: str, path: str, *, token: str | None = None, json: Any = None, data: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base + path, json=json, data=data, headers=headers) as response,
        ):
            body = await response.json(content_type=None)
            return response.status, body

    async def create_account(self, name: str = "test", multiplier: str | None = None) -> dict[str, str]:
        body: dict[str, Any] = {"name": name}
        if multiplier is not None:
            body["multiplier"] = multiplier
        status, account = await self.http("POST", "/admin/v1/accounts", token=self.settings.admin_token, json=body)
        assert status == 201, account
        return dict(account)

    async def pay(self, account_id: str, plan: str, amount: str, **extra: Any) -> dict[str, Any]:
        body = {
            "plan": plan,
            "amount_usd": amount,
            "payment_ref": extra.pop("ref", uuid.uuid4().hex),
            **extra,
        }
        status, reply = await self.http(
            "POST", f"/admin/v1/accounts/{account_id}/payments", token=self.settings.admin_token, json=body
        )
        assert status == 201, reply
        return dict(reply)

    async def post_usage(self, events: list[dict[str, Any]]) -> tuple[int, Any]:
        return await self.http("POST", "/v1/usage", token=self.settings.ingest_token, json={"events": events})

    async def usage(self, key: str) -> dict[str, Any]:
        status, body = await self.http("GET", "/v1/account/usage", token=key)
        assert status == 200, body
        return dict(body)

    # -- NATS and Postgres --------------------------------------------------------------

    async def nats(self) -> Client:
        return await nats.connect(self.settings.nats_url)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.settings.database_url)

    async def stream_messages(self) -> int:
        nc = await self.nats()
        try:
            info = await nc.jetstream().stream_info(self.settings.stream)
            return int(info.state.messages)
        finally:
            await nc.close()


async def flowplan_replay(stack: Stack, *args: str) -> tuple[int, str]:
    """Run `flowplan replay ARGS` against the stack; (exit code, output)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "flowplan"), "replay", *args, env=settings_environ(stack.settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    return process.returncode or 0, out.decode()


def usage_event(account_id: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "account_id": account_id,
        "model": "deepseek/deepseek-chat",
        "input_tokens": 1000,
        "output_tokens": 500,
        "billing_mode": "subscription",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    event.update(fields)
    return event


async def eventually(check: Callable[[], Any], within: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async check until it returns something truthy (or its last assertion fails)."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = await check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"still {result!r} after {within}s")
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


def make_settings(nats_url: str, database_url: str) -> Settings:
    from libs.settings import load_settings

    return load_settings(
        {},
        nats_url=nats_url,
        database_url=database_url,
        ingress_port=free_port(),
        quota_port=free_port(),
        keys_port=free_port(),
        billing_port=free_port(),
        refund_port=free_port(),
        gateway_port=free_port(),
        simulator_port=free_port(),
        console_port=free_port(),
        console_secret="test-console-" + uuid.uuid4().hex,
        admin_token="test-admin-" + uuid.uuid4().hex,
        ingest_token="test-ingest-" + uuid.uuid4().hex,
        ack_wait_s=2.0,
    )
