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
    """What each means, and its default: the Settings field _FROM names (libs/settings.py)."""

    host: str
    port: int
    tokens_per_s: float
    first_token_ms: float
    require_key: str
    max_body_bytes: int
    payment_webhook_secret: str
    payment_webhook_url: str
    ingress_port: int
    payment_provider_public_url: str

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
