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
        if settings.tokens_per_s < 0 or settings.first_token_ms < 0:
            raise ValueError("FLOWPLAN_SIMULATOR_TOKENS_PER_S and _FIRST_TOKEN_MS must not be negative")
        return settings
