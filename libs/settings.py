"""Typed settings, read from FLOWPLAN_* environment variables in one place."""

import os
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

DEV_ADMIN_TOKEN = "dev-admin-token"
DEV_INGEST_TOKEN = "dev-ingest-token"
DEV_CONSOLE_SECRET = "dev-console-secret"


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
    partitions: int = 4
    """Partitions of the event stream; fixed when the stream is first declared."""
    stream_max_bytes: int = -1
    """Disk budget of the event stream; past it publishes are refused (discard=new), history is never dropped."""
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Copies JetStream keeps of each stream: 3 on a three-node cluster in production, 1 on a single server."""
    projection_batch: int = 1000
    projection_linger_s: float = 0.02
    """How long a projection waits for more events when a fetch returned a partial batch."""
    ack_wait_s: float = 10.0
    """How long the broker waits for a projection's ack before it redelivers (after a crash)."""
    max_usage_batch: int = 5000
    max_body_bytes: int = 8 * 1024 * 1024
    accepted_lateness_s: int = 8 * 24 * 3600
    accepted_lead_s: int = 5 * 60
    dedupe_retention_s: int = 9 * 24 * 3600
    reservation_timeout_s: float = 120.0
    request_timeout_s: float = 2.0
    account_changes_per_minute: int = 60
    """Changes (non-GET account API requests) one account may make per minute, in a burst or spread out."""
    refund_barrier_wait_s: float = 5.0
    """How long a refund request waits for the refund projection to catch up with the account's events
    before it answers from what is applied (the settling waits for all of it regardless)."""
    billing_barrier_wait_s: float = 5.0
    """How long a payment or top-up waits for billing's projection to apply the account's events
    stored so far before billing refuses it (retry) rather than decide from an older plan."""
    upstreams: str = ""
    """JSON: vendor (or "default") -> {"url": base URL, "key": API key}. Default: the local simulator."""
    upstream_timeout_s: float = 600.0
    catalog_path: str = ""
    plans_path: str = ""
    log_level: str = "INFO"
    grafana_db_password: str = ""
    """Password of Grafana's read-only Postgres role (flowplan_grafana); set-up creates the role only when set."""
    console_port: int = 8088
    console_url: str = ""
    """The console's address as owners reach it (sign-in links point there); default http://host:console_port."""
    console_secret: str = DEV_CONSOLE_SECRET
    """Shared by the console and ingress: signs the short-lived credential the console calls the account API with."""
    ingress_url: str = ""
    """Where the console reaches ingress's account API; default http://host:ingress_port."""
    payment_webhook_secret: str = "dev-payment-webhook-secret"
    """Shared with the payment provider: signs its webhooks (POST /v1/webhooks/payments)."""
    payment_provider_url: str = ""
    """The local payment provider's API (served by the simulator); default http://host:simulator_port."""
    payment_provider_public_url: str = ""
    """Where browsers reach the local provider's checkout pages, when not at payment_provider_url."""
    mail_url: str = ""
    """Where the console sends mail (the local mail adapter, `POST /mailbox`); default the simulator's."""
    sign_ups_per_hour: int = 5
    """Sign-ups the console accepts from one client address per hour."""


def settings_environ(settings: Settings) -> dict[str, str]:
    """The FLOWPLAN_* variables that make a child process load these very settings."""
    return {
        f"FLOWPLAN_{field.name.upper()}": str(getattr(settings, field.name))
        for field in msgspec.structs.fields(Settings)
    }


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from FLOWPLAN_<FIELD> variables; overrides win (tests, composition roots)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        raw = env.get(f"FLOWPLAN_{field.name.upper()}")
        if raw is not None and raw != "":
            values[field.name] = raw
    values.update(overrides)
    return msgspec.convert(values, Settings, strict=False)
