"""A model call's JSON body, read the way the upstream will read it, or the reason it is refused.

The gateway decides on the body (model, streaming, estimate) and forwards its bytes as they
are, so the two readings must agree: a key given twice (msgspec keeps the last, an upstream
may keep the first) or a `stream` that is not a boolean (both OpenAI and Anthropic require one)
is refused rather than guessed. Nesting is bounded: msgspec stops at Python's recursion limit
with a RecursionError, which is no reason for a 500."""

import json
import re
from typing import Any, NamedTuple

import msgspec

_decoder = msgspec.json.Decoder()
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")


class BodyError(NamedTuple):
    message: str
    param: str | None = None


def nesting_depth(raw: bytes, limit: int) -> int:
    """How deep arrays and objects nest in valid JSON, counted up to limit + 1 (then it stops).
    Strings are cut out and each pass removes the innermost pairs, all at C speed."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    while brackets and depth <= limit:
        depth += 1
        brackets = _INNERMOST.sub(b"", brackets)
    return depth


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs  # every object as its (key, value) pairs, duplicates kept


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any] | BodyError:
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError:
        return BodyError("the request body is not valid JSON")
    except RecursionError:
        return BodyError(f"the request body nests arrays or objects more than {max_depth} deep")
    if not isinstance(body, dict):
        return BodyError("the request body must be a JSON object")
    if nesting_depth(raw, max_depth) > max_depth:
        return BodyError(f"the request body nests arrays or objects more than {max_depth} deep")
    seen: set[str] = set()
    for name, _ in json.loads(raw, object_pairs_hook=_pairs):
        if name in seen:
            return BodyError(f"{name}: given more than once", name)
        seen.add(name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return BodyError("stream: must be true or false", "stream")
    return body
