"""Typed settings, read from FLOWPLAN_* environment variables in one place."""

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_INGEST_TOKEN = "dev-ingest-token"
DEV_CONSOLE_SECRET = "dev-console-secret"
DEV_PAYMENT_WEBHOOK_SECRET = "dev-payment-webhook-secret"
DEV_CLIENT_HASH_KEY = "dev-client-hash-key"
DEFAULT_PARTITIONS = 4
"""The event stream's partitions unless FLOWPLAN_PARTITIONS says otherwise."""
TOKENS = {
    "admin_token": DEV_ADMIN_TOKEN,
    "ingest_token": DEV_INGEST_TOKEN,
    "console_secret": DEV_CONSOLE_SECRET,
    "payment_webhook_secret": DEV_PAYMENT_WEBHOOK_SECRET,
    "client_hash_key": DEV_CLIENT_HASH_KEY,
}
"""The bearer tokens and their development defaults, which are public (in this repository)."""
SECRETS = (
    "admin_token",
    "ingest_token",
    "ingest_tokens",
    "console_secret",
    "payment_webhook_secret",
    "client_hash_key",
    "smtp_url",
    "database_url",
    "upstreams",
    "grafana_db_password",
)
"""Settings that may be read from a file named by FLOWPLAN_<NAME>_FILE (Docker or Kubernetes secrets),
so that they need not sit in the environment or in a compose file."""


class SettingsError(ValueError):
    """The configuration cannot be used; the message names the variable to fix."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/flowplan"
    admin_token: str = DEV_ADMIN_TOKEN
    ingest_token: str = DEV_INGEST_TOKEN
    host: str = "127.0.0.1"
    ingress_port: int = 8081
    quota_port: int = 8082
    keys_port: int = 8083
    billing_port: int = 8084
    refund_port: int = 8085
    gateway_port: int = 8080
    simulator_port: int = 8090
    stream: str = "FLOWPLAN_EVENTS"
    dlq_stream: str = "FLOWPLAN_DLQ"
    partitions: int = DEFAULT_PARTITIONS
    """Partitions of the event stream; fixed when the stream is first declared."""
    stream_max_bytes: int = -1
    """Disk budget of the event stream; past it publishes are refused (discard=new), history is never dropped."""
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Copies JetStream keeps of each stream: 3 on a three-node cluster in production, 1 on a single server."""
    projection_batch: int = 1000
    projection_linger_s: float = 0.1
    """How long a projection waits for more events when a fetch returned a partial batch: at a
    gateway's pace each batch costs the same fetch, transaction, checkpoint and ack however few
    events it holds, so a longer wait is less CPU per event, for at most this much more lag."""
    ack_wait_s: float = 10.0
    """How long the broker waits for a projection's ack before it redelivers (after a crash)."""
    max_usage_batch: int = 5000
    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    """Deepest nesting of arrays and objects the gateway accepts in a request body (deeper: 400)."""
    header_timeout_s: float = 30.0
    """The gateway closes a connection that has not sent a whole request head within this time
    (also how long a kept-alive connection may stay idle): a client trickling headers is cut."""
    body_timeout_s: float = 60.0
    """The gateway answers 408 and closes the connection when a request body takes longer to arrive."""
    key_cache_size: int = 100_000
    """Keys the gateway and ingress remember (valid ones, and apart from them unknown ones); least recently used go."""
    unknown_key_burst: int = 20
    unknown_key_rate_per_s: float = 0.2
    """Lookups of keys not known valid, per client address: a burst, then this many per second (else 429)."""
    unknown_key_global_burst: int = 1000
    unknown_key_global_rate_per_s: float = 200.0
    """The same for all clients together, so that many addresses cannot flood the keys service."""
    accepted_lateness_s: int = 8 * 24 * 3600
    accepted_lead_s: int = 5 * 60
    dedupe_retention_s: int = 9 * 24 * 3600
    request_timeout_s: float = 2.0
    account_changes_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 60
    """Changes (non-GET account API requests) one account may make per minute, in a burst or spread out."""
    refund_barrier_wait_s: float = 5.0
    """How long a refund request waits for the refund projection to catch up with the account's events
    before it answers from what is applied (the settling waits for all of it regardless)."""
    billing_barrier_wait_s: float = 5.0
    """How long a payment or top-up waits for billing's projection to apply the account's events
    stored so far before billing refuses it (retry) rather than decide from an older plan."""
    client_hash_key: str = DEV_CLIENT_HASH_KEY
    """The HMAC key of the client address and user agent hashes the gateway records with each call
    (abuse signals): the log never holds an address, and without the key a hash cannot be matched
    to one."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks of the reverse proxies in front of the gateway: only a
    call from one of them has its client address taken from X-Forwarded-For (for the abuse signals'
    client hash and the gateway's per-client limit on unknown-key lookups)."""
    insider_sweep_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """How often billing looks for insiders whose paid subscription lapsed to Free with no payment
    since (a payment looks at once); the lapse is dated when it happened, whenever it is seen."""
    upstreams: str = ""
    """JSON: vendor (or "default") -> {"url": base URL, "key": API key}. Default: the local simulator."""
    upstream_timeout_s: float = 600.0
    catalog_path: str = ""
    plans_path: str = ""
    log_level: str = "INFO"
    grafana_db_password: str = ""
    """Password of Grafana's read-only Postgres role (flowplan_grafana); set-up creates the role only when set."""
    ingest_tokens: str = ""
    """More metering clients beside FLOWPLAN_INGEST_TOKEN's (named "default"): "name=token,name=token".
    A usage event_id is the client's own: it is deduplicated per client and account."""
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """How often each gateway lists its calls in flight to quota (GatewayHeartbeat), renewing their
    reservations. The same on every gateway and quota: after a start quota listens this long twice
    before it admits anything."""
    heartbeat_misses: Annotated[int, msgspec.Meta(ge=1)] = 3
    """Heartbeat intervals without a renewal after which quota takes a reservation's call as ended
    (its gateway finished it, or is gone): the reservation then waits only for the account's events
    stored so far to be projected."""
    shutdown_grace_s: float = 30.0
    """How long a stopping gateway lets running calls finish; streams still running then are cut and
    billed for what the client was sent."""
    usage_durability: Literal["ack", "queue"] = "ack"
    """ack: a call's last byte waits for JetStream to store its usage; queue: the previous design
    (usage published after the response, lost if the gateway is killed), kept for `make bench`."""
    usage_store_timeout_s: float = 60.0
    """How long a call that ran holds its response while its usage cannot be stored (retried)."""
    console_port: int = 8088
    console_url: str = ""
    """The console's address as owners reach it (sign-in links point there); default http://host:console_port."""
    console_secret: str = DEV_CONSOLE_SECRET
    """Shared by the console, ingress and the gateway: signs the short-lived credentials the console calls
    the account API (libs/ownerpass.py) and, for Studio Chat, the gateway (libs/chatpass.py) with."""
    ingress_url: str = ""
    """Where the console reaches ingress's account API; default http://host:ingress_port."""
    gateway_url: str = ""
    """Where the console's Studio Chat reaches the gateway; default http://host:gateway_port."""
    payment_webhook_secret: str = DEV_PAYMENT_WEBHOOK_SECRET
    """Shared with the payment provider: signs its webhooks (POST /v1/webhooks/payments)."""
    payment_provider_url: str = ""
    """The local payment provider's API (served by the simulator); default http://host:simulator_port."""
    payment_provider_public_url: str = ""
    """Where browsers reach the local provider's checkout pages, when not at payment_provider_url."""
    mail_url: str = ""
    """Where the console sends mail (the local mail adapter, `POST /mailbox`); default the simulator's."""
    smtp_url: str = ""
    """An SMTP server to send the console's mail through instead (services/console/mail.py): smtp://user:password@host:port
    (?starttls=true) or smtps://…; empty: the local mail adapter."""
    mail_from: str = "flowplan <no-reply@localhost>"
    """The sender of the console's mail through SMTP."""
    sign_ups_per_hour: int = 5
    """Sign-ups the console accepts from one client address per hour."""
    simulator_tokens_per_s: float = 2000.0
    """The simulator's output pace; 0 = as fast as possible (non-streamed answers wait for it too)."""
    simulator_first_token_ms: float = 0.0
    """The simulator's delay before the first output token (time to first token)."""
    simulator_require_key: str = ""
    """When set, the simulator's requests must carry it as `Authorization: Bearer <key>` or `x-api-key`."""
    simulator_max_body_bytes: int = 32 * 1024 * 1024
    payment_webhook_url: str = ""
    """Where the local payment provider (the simulator) sends its webhooks; default ingress on this host."""
    state_dir: str = ".flowplan"
    """Where `make run` (libs/devstack.py) keeps its local nats-server's and Postgres's data, the demo account."""
    failpoint: str = ""
    """Fault tests only: "name:count,…" arms libs/failpoints.py (the count-th pass ends the process)."""


def settings_environ(settings: Settings) -> dict[str, str]:
    """The FLOWPLAN_* variables that make a child process load these very settings."""
    return {
        f"FLOWPLAN_{field.name.upper()}": str(getattr(settings, field.name))
        for field in msgspec.structs.fields(Settings)
    }


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from FLOWPLAN_<FIELD> variables (or FLOWPLAN_<FIELD>_FILE for a secret);
    overrides win (tests, composition roots). An empty variable means the default, except for a
    token: an empty token is a mistake (a compose file's unset variable), never the public default."""
    env = os.environ if environ is None else environ
    values = _raw(env, [field.name for field in msgspec.structs.fields(Settings)])
    values.update(overrides)
    return msgspec.convert(values, Settings, strict=False)


def read_setting(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting by the rules of load_settings, the others not read (for what reads its setting
    at import time: libs/failpoints.py)."""
    env = os.environ if environ is None else environ
    return getattr(msgspec.convert(_raw(env, [name]), Settings, strict=False), name)


def is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether FLOWPLAN_<NAME> (or its _FILE) is set: `make run` starts a local server otherwise."""
    return name in _raw(os.environ if environ is None else environ, [name])


def _raw(env: Mapping[str, str], names: list[str]) -> dict[str, Any]:
    """The FLOWPLAN_<NAME> (or FLOWPLAN_<NAME>_FILE) text of each setting that is set."""
    values: dict[str, Any] = {}
    for field in names:
        name = f"FLOWPLAN_{field.upper()}"
        raw = _secret_file(env, name) if field in SECRETS else None
        if raw is None:
            raw = env.get(name)
        if raw == "" and field in TOKENS:
            raise SettingsError(f"{name} is set but empty: set a token (or unset it on a loopback-only machine)")
        if raw is not None and raw != "":
            values[field] = raw
    return values


def _secret_file(env: Mapping[str, str], name: str) -> str | None:
    """The secret in the file FLOWPLAN_<NAME>_FILE names (one trailing newline dropped), if set."""
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    if env.get(name):
        raise SettingsError(f"{name} and {name}_FILE are both set: set one of them")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return text.removesuffix("\n").removesuffix("\r")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


def check_exposure(settings: Settings) -> None:
    """A service that listens beyond this machine must not accept the public development tokens."""
    if is_loopback(settings.host):
        return
    for field, dev_token in TOKENS.items():
        if getattr(settings, field) == dev_token:
            raise SettingsError(
                f"FLOWPLAN_{field.upper()} is the development default ({dev_token!r}) but FLOWPLAN_HOST is "
                f"{settings.host!r}, not loopback: set FLOWPLAN_{field.upper()} (or FLOWPLAN_{field.upper()}_FILE) "
                "to a secret of your own"
            )
