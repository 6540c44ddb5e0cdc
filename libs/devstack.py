"""`make run`: the whole stack on one machine, from nothing, until Ctrl-C.

Starts a local nats-server (JetStream) and Postgres unless FLOWPLAN_NATS_URL /
FLOWPLAN_DATABASE_URL say where they are, runs the set-up step, starts every service
as a child process, creates a demo account and prints its key with examples.
Data lives in .flowplan/ so that a second `make run` finds the first one's state.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from libs.localservers import LocalNats, LocalPostgres, port_is_free, wait_for_port
from libs.settings import (
    DEV_ADMIN_TOKEN,
    DEV_INGEST_TOKEN,
    Settings,
    SettingsError,
    check_exposure,
    is_set,
    load_settings,
    read_setting,
)
from libs.setup import set_up

SERVICES = ("simulator", "quota", "keys", "billing", "refund", "console", "ingress", "gateway")
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
"""Wait before restarting a service that exited: longer while it keeps exiting soon after a start."""
STOP_WAIT_S = 10.0
"""How long a stopping service gets (past the gateway's shutdown grace) before it is killed."""


def _pick_port(preferred: int) -> int | None:
    return preferred if port_is_free(preferred) else None


class DevStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.nats: LocalNats | None = None
        self.postgres: LocalPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._env: dict[str, str] = {}
        self._grace_s = 30.0

    def start_servers(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if not is_set("nats_url"):
            self.nats = LocalNats(self.state_dir / "nats", _pick_port(14222))
            self.nats.start()
            env["FLOWPLAN_NATS_URL"] = self.nats.url
            print(f"  nats-server (JetStream) on {self.nats.url}")
        if not is_set("database_url"):
            self.postgres = LocalPostgres(self.state_dir / "postgres", _pick_port(15432))
            self.postgres.start()
            env["FLOWPLAN_DATABASE_URL"] = self.postgres.url
            print(f"  postgres on {self.postgres.url}")
        return env

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _spawn(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**os.environ, **self._env},
            stdout=log,
            stderr=log,
            # Its own session: a Ctrl-C at the terminal reaches `flowplan up` alone, which stops
            # the services in order; a signal that reaches one service is that service's business.
            start_new_session=True,
        )

    def start_services(self, env: dict[str, str], settings: Settings) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._env = env
        try:  # each service would refuse on its own; say why once, before starting any
            check_exposure(settings)
        except SettingsError as exc:
            raise SystemExit(f"refusing to start: {exc}") from None
        self._grace_s = settings.shutdown_grace_s
        busy = [name for name in SERVICES if not port_is_free(getattr(settings, f"{name}_port"))]
        if busy:
            raise SystemExit(
                "port(s) in use: "
                + ", ".join(
                    f"{name} {getattr(settings, f'{name}_port')} (FLOWPLAN_{name.upper()}_PORT)" for name in busy
                )
                + ". Is another flowplan running? Stop it, or choose other ports."
            )
        for name in SERVICES:
            self._spawn(name)
        for name in SERVICES:
            wait_for_port(getattr(settings, f"{name}_port"), timeout=60, process=self.children[name])
        print(f"  services: {', '.join(SERVICES)} (logs in {self.logs})")

    def supervise(self) -> None:
        """Services are crash-only: one that exits, whatever the reason (a crash, an OOM kill, an
        orchestrator's SIGTERM for a rolling deploy), is started again after a short backoff, as a
        process manager would. Only a signal to `flowplan up` itself stops the stack; a service
        that keeps failing at once is a configuration problem, and stops it too."""
        quick_failures = dict.fromkeys(self.children, 0)
        started = dict.fromkeys(self.children, time.monotonic())
        due: dict[str, float] = {}
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            for name, child in list(self.children.items()):
                if name in due:
                    if now >= due[name]:
                        del due[name]
                        self._spawn(name)
                        started[name] = time.monotonic()
                    continue
                if child.poll() is None:
                    continue
                quick_failures[name] = quick_failures[name] + 1 if now - started[name] < 10 else 1
                if quick_failures[name] >= 3 and child.returncode != 0:
                    raise SystemExit(f"{name} keeps failing at start; see {self.logs / name}.log")
                backoff = RESTART_BACKOFF_S[min(quick_failures[name], len(RESTART_BACKOFF_S)) - 1]
                print(
                    f"  {name} exited with {child.returncode}; restarting in {backoff:g} s "
                    f"(see {self.logs / name}.log)",
                    flush=True,
                )
                due[name] = now + backoff

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s + STOP_WAIT_S  # the gateway lets its streams end
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()


def _admin(settings: Settings, path: str, body: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(
        f"http://{settings.host}:{settings.ingress_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {settings.admin_token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


DEMO_EMAIL = "demo@flowplan.local"
DEMO_PLAN = "pro"
"""The demo account's plan: a demo payment buys it, so that every example model works."""


def _plan_of(settings: Settings, key: str) -> str | None:
    """The plan the live stack has for the key's account; None when the stack does not know the key
    (another database, or one dropped since)."""
    request = urllib.request.Request(
        f"http://{settings.host}:{settings.ingress_port}/v1/account/usage", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.loads(response.read())["plan"])
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            return None
        raise


def _demo_payment(settings: Settings, account_id: str) -> None:
    payment = {"plan": DEMO_PLAN, "amount_usd": "20.00", "payment_ref": f"demo-{account_id}-{int(time.time())}"}
    _admin(settings, f"/admin/v1/accounts/{account_id}/payments", payment)


def _with_sign_in_link(settings: Settings, account: dict[str, str]) -> dict[str, str]:
    """A sign-in link is single use: each start gives the demo owner a fresh one."""
    try:
        link = _admin(settings, f"/admin/v1/accounts/{account['account_id']}/sign-in-link", {})
    except urllib.error.HTTPError:  # no console answering: the banner says so
        return {**account, "sign_in_url": ""}
    return {**account, "sign_in_url": link["sign_in_url"], "email": link.get("email") or ""}


def _demo_account(settings: Settings, state_dir: Path) -> dict[str, str]:
    """A demo account on a Pro subscription (a demo payment), so every example model works. The one
    saved by an earlier run is printed again only when the live stack still knows its key (the
    database may be another one now); a demo month that has ended is paid again."""
    saved = state_dir / "demo-account.json"
    if saved.exists() and "management_key" in (account := dict(json.loads(saved.read_text()))):
        # (one saved before management keys existed cannot change anything: it is made anew)
        plan = _plan_of(settings, account["key"])
        if plan is not None:
            if plan != DEMO_PLAN:
                _demo_payment(settings, account["account_id"])
            return _with_sign_in_link(settings, account)
        print(f"  the saved demo account {account['account_id']} is unknown to this database: creating another")
    try:
        account = _admin(settings, "/admin/v1/accounts", {"name": "demo", "email": DEMO_EMAIL})
    except urllib.error.HTTPError as exc:  # the email is an earlier demo owner's (its state file was removed)
        if exc.code != 409:
            raise
        account = _admin(settings, "/admin/v1/accounts", {"name": "demo"})
    _demo_payment(settings, account["account_id"])
    saved.write_text(json.dumps(account))
    saved.chmod(0o600)
    return account


BANNER = """
flowplan is running: gateway {gateway}, account and admin API {ingress}, console {console}.{tokens}
  demo account: {account_id} (Pro, from a demo payment)
  console:      {sign_in_url}
                (one-time sign-in link for {email}, 24 h: it asks for a password; then {console}/sign-in)
  demo key:     {key}
  management:   {management_key}   (changes the account: keys, refunds, Extra Usage; never calls models)

OpenAI SDK (the models answer from the local upstream simulator):
  {python} - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{gateway}/v1", api_key="{key}")
reply = client.chat.completions.create(model="openai/gpt-5-mini", messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content, reply.usage)
EOF

Anthropic SDK:
  {python} - <<'EOF'
from anthropic import Anthropic
client = Anthropic(base_url="{gateway}", api_key="{key}")
message = client.messages.create(model="anthropic/claude-sonnet-4.5", max_tokens=64,
                                 messages=[{{"role": "user", "content": "Hello!"}}])
print(message.content[0].text, message.usage)
EOF

curl:
  curl -s {gateway}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "deepseek/deepseek-chat", "max_tokens": 20, "messages": [{{"role": "user", "content": "Hi"}}]}}'

Claude Code:
  ANTHROPIC_BASE_URL={gateway} ANTHROPIC_AUTH_TOKEN={key} ANTHROPIC_MODEL=anthropic/claude-sonnet-4.5 claude

The account's windows, calls and keys (any of its keys reads them):
  curl -s {ingress}/v1/account/usage -H 'Authorization: Bearer {key}'
  curl -s '{ingress}/v1/account/usage/events?limit=5' -H 'Authorization: Bearer {key}'
  curl -s {ingress}/v1/keys -H 'Authorization: Bearer {key}'
Changes need the management key (a model key gets 403 insufficient_scope):
  curl -s {ingress}/v1/keys -H 'Authorization: Bearer {management_key}' -d '{{"name": "ci", "kind": "payg"}}'

Usage from a metering client (the ingest API):
  curl -s -X POST {ingress}/v1/usage -H 'Authorization: Bearer {ingest_token}' \\
    -d '{{"events": [{{"event_id": "demo-{stamp}", "account_id": "{account_id}",
         "model": "anthropic/claude-sonnet-4.5", "input_tokens": 1200, "output_tokens": 350,
         "billing_mode": "subscription", "occurred_at": "{now}"}}]}}'

Refunds (of a paid plan, within 24 hours of its payment):
  curl -s {ingress}/v1/refunds/preview -H 'Authorization: Bearer {key}'
  curl -s -X POST {ingress}/v1/refunds -H 'Authorization: Bearer {management_key}'

Ops commands (the event log, dead letters, an account; `flowplan --help` lists them all):
  export FLOWPLAN_NATS_URL={nats_url} FLOWPLAN_DATABASE_URL={database_url}
  {bin}/flowplan accounts show {account_id}
  {bin}/flowplan events tail --account {account_id}

Ctrl-C stops everything this started.
"""


def _banner(settings: Settings, account: dict[str, str]) -> str:
    tokens = ""
    if settings.admin_token == DEV_ADMIN_TOKEN or settings.ingest_token == DEV_INGEST_TOKEN:
        tokens = (
            "\n  dev tokens (set FLOWPLAN_ADMIN_TOKEN / FLOWPLAN_INGEST_TOKEN for real ones):"
            f"\n    admin:  {settings.admin_token}\n    ingest: {settings.ingest_token}\n"
        )
    return BANNER.format(
        gateway=f"http://{settings.host}:{settings.gateway_port}",
        ingress=f"http://{settings.host}:{settings.ingress_port}",
        console=settings.console_url or f"http://{settings.host}:{settings.console_port}",
        sign_in_url=account.get("sign_in_url") or "(none: the console did not answer)",
        email=account.get("email") or "the demo owner",
        tokens=tokens,
        account_id=account["account_id"],
        key=account["key"],
        management_key=account["management_key"],
        python=Path(sys.executable),
        bin=Path(sys.executable).parent,
        nats_url=settings.nats_url,
        database_url=settings.database_url,
        ingest_token=settings.ingest_token,
        stamp=int(time.time()),
        now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def main() -> None:
    state_dir = Path(read_setting("state_dir")).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(state_dir)
    # SIGINT or SIGTERM to `flowplan up` (and only to it: the services run in sessions of their
    # own) stops everything, even where a parent shell left SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        print("Starting flowplan:")
        env = stack.start_servers()
        os.environ.update(env)
        settings = load_settings()
        applied = asyncio.run(set_up(settings))
        print(f"  set-up done ({len(applied)} migrations applied)")
        stack.start_services(env, settings)
        print(_banner(settings, _demo_account(settings, state_dir)), flush=True)
        stack.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        print("\nStopping flowplan...")
        stack.stop()
