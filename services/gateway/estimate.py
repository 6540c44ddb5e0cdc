"""What a call may cost before it runs: the reservation quota holds while it is in flight."""

from typing import Any, TypeGuard

import msgspec

from libs.pricing.catalog import Model
from libs.pricing.flows import usd_cost_pico

DEFAULT_MAX_OUTPUT = 1024
BYTES_PER_TOKEN = 4
_json = msgspec.json.Encoder()


def estimate_usd_micros(model: Model, body: dict[str, Any], body_bytes: int) -> int:
    if model.kind == "image":
        n = body.get("n", 1)
        images = n if isinstance(n, int) and 0 < n <= 10 else 1
        return max(1, usd_cost_pico(model, body_bytes // BYTES_PER_TOKEN, 0, 0, images) // 10**6)
    limits = (body.get("max_tokens"), body.get("max_completion_tokens"), body.get("max_output_tokens"))
    asked = [v for v in limits if _count(v)]
    output = asked[0] if asked else DEFAULT_MAX_OUTPUT
    return max(1, usd_cost_pico(model, body_bytes // BYTES_PER_TOKEN, output, 0, 0) // 10**6)


def _count(value: object) -> TypeGuard[int]:
    """A positive whole number (JSON true is not one, though Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A prompt's tokens when no upstream can count them: its text's bytes / BYTES_PER_TOKEN (what
    the reservation assumes too), over what a model reads: messages, system prompt and tools."""
    size = sum(len(_json.encode(body[part])) for part in ("messages", "system", "tools") if part in body)
    return max(1, size // BYTES_PER_TOKEN)
