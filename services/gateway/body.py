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
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{}:")
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")


class BodyError(NamedTuple):
    message: str
    param: str | None = None


def shape(raw: bytes, limit: int) -> tuple[int, int]:
    """(how deep arrays and objects nest, how many keys the outermost object has, duplicates
    counted) in valid JSON whose top level is an object; the depth is counted up to limit + 1.

    All at C speed, whatever the body: escapes and strings are cut out (valid JSON has
    backslashes only in strings, and a run of them pairs up from its start), what is left is
    brackets and the colons after keys; each pass removes the innermost containers with their
    colons, until only the outermost object's own colons are left."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(raw.split(b'"')[::2]).translate(None, _NOT_STRUCTURE)
    depth = 1
    while structure[1:-1].translate(None, b":"):
        depth += 1
        if depth > limit:
            break
        structure = b"{" + _INNERMOST.sub(b"", structure[1:-1]) + b"}"
    return depth, structure.count(b":")


def _pairs(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs  # every object as its (key, value) pairs, duplicates kept


def _duplicate(raw: bytes) -> str:
    seen: set[str] = set()
    for name, _ in json.loads(raw, object_pairs_hook=_pairs):
        if name in seen:
            return str(name)
        seen.add(name)
    raise AssertionError("shape() counted a duplicate the parser does not see")


def parse_body(raw: bytes, max_depth: int) -> dict[str, Any] | BodyError:
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError:
        return BodyError("the request body is not valid JSON")
    except RecursionError:
        return BodyError(f"the request body nests arrays or objects more than {max_depth} deep")
    if not isinstance(body, dict):
        return BodyError("the request body must be a JSON object")
    depth, keys = shape(raw, max_depth)
    if depth > max_depth:
        return BodyError(f"the request body nests arrays or objects more than {max_depth} deep")
    if keys > len(body):
        name = _duplicate(raw)
        return BodyError(f"{name}: given more than once", name)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return BodyError("stream: must be true or false", "stream")
    return body
