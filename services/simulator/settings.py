"""The simulator's settings: its part of the one Settings (libs/settings.py, FLOWPLAN_*), under the
names its code uses."""

from collections.abc import Mapping
from typing import Any

import msgspec

from libs.settings import Settings, load_settings

_FROM = {
    "host": "host",
    "port": "simulator_port",
    "tokens_per_s": "simulator_tokens_per_s",
    "first_token_ms": "simulator_first_token_ms",
    "require_key": "simulator_require_key",
    "max_body_bytes": "simulator_max_body_bytes",
    "payment_webhook_secret": "payment_webhook_secret",
    "payment_webhook_url": "payment_webhook_url",
    "ingress_port": "ingress_port",
    "payment_provider_public_url": "payment_provider_public_url",
}
"""Each simulator setting and the Settings field (FLOWPLAN_<FIELD>) it is."""


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
    def from_settings(cls, settings: Settings, **overrides: Any) -> "SimulatorSettings":
        values = {name: getattr(settings, field) for name, field in _FROM.items()}
        values.update(overrides)
        simulator = msgspec.convert(values, cls, strict=False)
        if not simulator.payment_webhook_url:
            url = f"http://127.0.0.1:{simulator.ingress_port}/v1/webhooks/payments"
            simulator = msgspec.structs.replace(simulator, payment_webhook_url=url)
        if simulator.tokens_per_s < 0 or simulator.first_token_ms < 0:
            raise ValueError("FLOWPLAN_SIMULATOR_TOKENS_PER_S and _FIRST_TOKEN_MS must not be negative")
        return simulator

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "SimulatorSettings":
        """From FLOWPLAN_* through the one loader (load_settings)."""
        return cls.from_settings(load_settings(environ), **overrides)
