"""Reading JSON of any shape: what an upstream streams or answers, and what a client sends.

A value of the wrong type (a number where a list goes, a list where a string goes) reads as the
empty value of the expected type, never a raise: a raise mid-stream would cut the client's stream
and leave tokens the upstream bills us for unbilled (tests/unit/test_translate_streams_hostile.py).
"""

from typing import Any


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_count(value: Any) -> int:
    """A token count: a non-negative int, else 0."""
    return value if isinstance(value, int) and value >= 0 else 0


def field(data: Any, name: str) -> Any:
    """data[name] if data is an object, else None."""
    return data.get(name) if isinstance(data, dict) else None


def event_type(data: dict[str, Any]) -> str | None:
    """An Anthropic or Responses event's type; None when it is no string (a list is unhashable:
    looked up in a set of types, it would be a crash)."""
    kind = data.get("type")
    return kind if isinstance(kind, str) else None
