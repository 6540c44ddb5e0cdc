"""The simulator's settings, read from FLOWPLAN_* environment variables."""

import os
from collections.abc import Mapping
from typing import Any

import msgspec

_ENV = {
    "host": "FLOWPLAN_HOST",
    "port": "FLOWPLAN_SIMULATOR_PORT",
    "tokens_per_s": "FLOWPLAN_SIMULATOR_TOKENS_PER_S",
    "first_token_ms": "FLOWPLAN_SIMULATOR_FIRST_TOKEN_MS",
    "require_key": "FLOWPLAN_SIMULATOR_REQUIRE_KEY",
    "max_body_bytes": "FLOWPLAN_SIMULATOR_MAX_BODY_BYTES",
    "payment_webhook_secret": "FLOWPLAN_PAYMENT_WEBHOOK_SECRET",
    "payment_webhook_url": "FLOWPLAN_PAYMENT_WEBHOOK_URL",
    "ingress_port": "FLOWPLAN_INGRESS_PORT",
    "payment_provider_public_url": "FLOWPLAN_PAYMENT_PROVIDER_PUBLIC_URL",
}


class SimulatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8090
    tokens_per_s: float = 2000.0
    """Output pace of a completion; 0 = as fast as possible (non-streamed answers wait for it too)."""
    first_token_ms: float = 0.0
    """Delay before the first output token (time to first token)."""
    require_key: str = ""
    """When set, requests must carry it as `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    max_body_bytes: int = 32 * 1024 * 1024
    payment_webhook_secret: str = "dev-payment-webhook-secret"
    """The local payment provider signs its webhooks with it (flowplan's FLOWPLAN_PAYMENT_WEBHOOK_SECRET)."""
    payment_webhook_url: str = ""
    """Where the local payment provider sends them; default ingress on this host."""
    ingress_port: int = 8081
    payment_provider_public_url: str = ""
    """Where browsers reach the checkout pages; default the address the session was created at."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "SimulatorSettings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, name in _ENV.items():
            raw = env.get(name)
            if raw is not None and raw != "":
                values[field] = raw
        values.update(overrides)
        settings = msgspec.convert(values, cls, strict=False)
        if not settings.payment_webhook_url:
            url = f"http://127.0.0.1:{settings.ingress_port}/v1/webhooks/payments"
            settings = msgspec.structs.replace(settings, payment_webhook_url=url)
        if settings.tokens_per_s < 0 or settings.first_token_ms < 0:
            raise ValueError("FLOWPLAN_SIMULATOR_TOKENS_PER_S and _FIRST_TOKEN_MS must not be negative")
        return settings
