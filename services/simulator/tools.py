"""When the simulator answers with a tool call instead of text: a deterministic rule, pure.

The rule (so that an agent loop, Claude Code or Codex, can complete a turn against it):

- A tool is called only when the request offers tools, `tool_choice` is not `none`, and the
  last message (system turns after it aside) is the user's: after a tool's result the model
  answers in text, ending its turn.
- Which tool: the one `tool_choice` names; else, with `tool_choice` `required` / `any`, the
  first offered; else the first offered tool whose name appears as a word in the text of the
  last user message. No such tool: a text reply.
- Its arguments: the JSON object of a `[[args:{...}]]` marker in that text when there is one
  (so a test knows them exactly); else one value per property of the tool's JSON schema
  (required ones, or all when none is required): a string `"flowplan"`, a number `1`, a
  boolean `true`, an array `[]`, an object `{}`.
- Its output tokens: 1 + (len(name) + len(arguments)) // 4, the arguments as JSON text.
"""

import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

_ARGS = re.compile(r"\[\[args:(\{.*?\})\]\]", re.DOTALL)
_SAMPLE = {"string": "flowplan", "number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}


class Offered(NamedTuple):
    name: str
    parameters: Any
    """The tool's JSON schema (any JSON value as the client sent it)."""


class ToolCall(NamedTuple):
    name: str
    arguments: str
    """The arguments as JSON text."""

    @property
    def tokens(self) -> int:
        return 1 + (len(self.name) + len(self.arguments)) // 4


def choose(offered: Sequence[Offered], forced: str | None, last_is_user: bool, text: str) -> ToolCall | None:
    """`forced`: the tool `tool_choice` names, `"*"` for required/any, `"none"`, or None (auto)."""
    if not offered or forced == "none" or not last_is_user:
        return None
    tool: Offered | None
    if forced == "*":
        tool = offered[0]
    elif forced is not None:
        tool = next((t for t in offered if t.name == forced), None)
    else:
        said = set(re.findall(r"[\w.-]+", text))
        tool = next((t for t in offered if t.name in said), None)
    if tool is None:
        return None
    return ToolCall(tool.name, _arguments(tool.parameters, text))


def _arguments(schema: Any, text: str) -> str:
    if found := _ARGS.search(text):
        try:
            given = json.loads(found.group(1))
        except ValueError:
            given = None
        if isinstance(given, dict):
            return json.dumps(given, separators=(",", ":"))
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return "{}"
    required = schema.get("required")
    names = [n for n in required if n in properties] if isinstance(required, list) and required else list(properties)
    values = {}
    for name in names:
        kind = properties[name].get("type") if isinstance(properties[name], dict) else None
        values[name] = _SAMPLE.get(kind if isinstance(kind, str) else "string", "flowplan")
    return json.dumps(values, separators=(",", ":"))
