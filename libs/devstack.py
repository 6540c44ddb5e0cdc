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
from libs.settings import DEV_ADMIN_TOKEN, DEV_INGEST_TOKEN, Settings, load_settings
from libs.setup import set_up

SERVICES = ("simulator", "quota", "keys", "billing", "refund", "console", "ingress", "gateway")


def _pick_port(preferred: int) -> int | None:
    return preferred if port_is_free(preferred) else None


class DevStack:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.nats: LocalNats | None = None
        self.postgres: LocalPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._env: dict[str, str] = {}

    def start_servers(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if not os.environ.get("FLOWPLAN_NATS_URL"):
            self.nats = LocalNats(self.state_dir / "nats", _pick_port(14222))
            self.nats.start()
            env["FLOWPLAN_NATS_URL"] = self.nats.url
            print(f"  nats-server (JetStream) on {self.nats.url}")
        if not os.environ.get("FLOWPLAN_DATABASE_URL"):
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
        )

    def start_services(self, env: dict[str, str], settings: Settings) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._env = env
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
        """Services are crash-only: one that exits is started again, as a process manager would;
        one that keeps failing at once is a configuration problem, and stops the stack."""
        quick_failures = dict.fromkeys(self.children, 0)
        started = dict.fromkeys(self.children, time.monotonic())
        while True:
            time.sleep(1)
            for name, child in list(self.children.items()):
                if child.poll() is None:
                    continue
                if child.returncode == 0:  # it was told to stop (Ctrl-C reaches the whole group)
                    raise KeyboardInterrupt
                quick_failures[name] = quick_failures[name] + 1 if time.monotonic() - started[name] < 10 else 1
                if quick_failures[name] >= 3:
                    raise SystemExit(f"{name} keeps failing at start; see {self.logs / name}.log")
                print(f"  {name} exited with {child.returncode}; restarting (see {self.logs / name}.log)")
                self._spawn(name)
                started[name] = time.monotonic()

    def stop(self) -> None:
        for child in self.children.values():
            child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(10)
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


def _demo_account(settings: Settings, state_dir: Path) -> dict[str, str]:
    """A demo account on a Pro subscription (a demo payment), so every example model works."""
    saved = state_dir / "demo-account.json"
    if saved.exists() and "management_key" in (known := json.loads(saved.read_text())):
        # A sign-in link is single use: each start gives the demo owner a fresh one.
        try:
            link = _admin(settings, f"/admin/v1/accounts/{known['account_id']}/sign-in-link", {})
        except urllib.error.HTTPError:  # no console answering: the banner says so
            return {**known, "sign_in_url": ""}
        return {**known, "sign_in_url": link["sign_in_url"], "email": link.get("email") or ""}
    try:
        account = _admin(settings, "/admin/v1/accounts", {"name": "demo", "email": DEMO_EMAIL})
    except urllib.error.HTTPError as exc:  # the email is an earlier demo owner's (its state file was removed)
        if exc.code != 409:
            raise
        account = _admin(settings, "/admin/v1/accounts", {"name": "demo"})
    payment = {"plan": "pro", "amount_usd": "20.00", "payment_ref": f"demo-{account['account_id']}"}
    _admin(settings, f"/admin/v1/accounts/{account['account_id']}/payments", payment)
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
    state_dir = Path(os.environ.get("FLOWPLAN_STATE_DIR", ".flowplan")).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(state_dir)
    try:
        print("Starting flowplan:")
        env = stack.start_servers()
        os.environ.update(env)
        settings = load_settings()
        applied = asyncio.run(set_up(settings))
        print(f"  set-up done ({len(applied)} migrations applied)")
        stack.start_services(env, settings)
        print(_banner(settings, _demo_account(settings, state_dir)), flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # even where a parent shell left SIGINT ignored
            signal.signal(sig, signal.default_int_handler)
        stack.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        print("\nStopping flowplan...")
        stack.stop()
