"""OpenAI Responses API events from a streamed chat completion: chunk by chunk, the Response's
event stream (created, output items and their deltas, completed), and its SSE framing. The
request and the whole answer are responses.py."""

import itertools
import json
from collections.abc import Callable
from typing import Any

from services.gateway.shapes import as_dict, as_list
from services.gateway.translate.responses import FINISH, call_item, message_item, response


class StreamToResponses:
    """A chat completion stream, chunk by chunk, as the Responses event stream: each chunk's
    text and tool call arguments go out as their deltas at once; `finish` closes the open items
    and ends with `response.completed` (or `.incomplete`, or `.failed` when the upstream broke
    off before its finish reason) carrying the usage the call was billed for."""

    def __init__(self, request: dict[str, Any], response_id: str, created: int) -> None:
        self.request, self.response_id, self.created = request, response_id, created
        self._seq = itertools.count()
        self._output: list[dict[str, Any]] = []
        self._text: dict[str, Any] | None = None  # the message item being written
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool call index -> its function_call item
        self._open_calls: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self._started = False

    def feed(self, chunk: Any) -> list[dict[str, Any]]:
        events = self._start()
        if not isinstance(chunk, dict):
            return events
        for choice in as_list(chunk.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = as_dict(choice.get("delta"))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events += self._text_delta(content)
            for call in as_list(delta.get("tool_calls")):
                if isinstance(call, dict):
                    events += self._call_delta(call)
            if isinstance(reason := choice.get("finish_reason"), str) and reason:
                self.finish_reason = reason
        return events

    def finish(self, usage_block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._start() + self._close_text()
        for item in self._open_calls:
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=self._output.index(item),
                    arguments=item["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=self._output.index(item), item=item))
        self._open_calls = []
        if self.finish_reason is None:
            error = {"code": "server_error", "message": "the upstream provider broke off the answer"}
            final = response(
                self.request, self.response_id, self.created, "failed", self._output, usage_block, error=error
            )
            return [*events, self._event("response.failed", response=final)]
        status, incomplete = FINISH.get(self.finish_reason, ("completed", None))
        final = response(self.request, self.response_id, self.created, status, self._output, usage_block, incomplete)
        return [*events, self._event(f"response.{status}", response=final)]

    def _start(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        begun = response(self.request, self.response_id, self.created, "in_progress", [], None)
        return [self._event("response.created", response=begun), self._event("response.in_progress", response=begun)]

    def _text_delta(self, content: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._text is None:
            item = message_item(f"msg_{self.response_id[5:]}_{len(self._output)}", "", "in_progress")
            self._text = item
            self._output.append(item)
            index = len(self._output) - 1
            events.append(self._event("response.output_item.added", output_index=index, item={**item, "content": []}))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part={**item["content"][0], "text": ""},
                )
            )
        item = self._text
        item["content"][0]["text"] += content
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self._output.index(item),
                content_index=0,
                delta=content,
                logprobs=[],
            )
        )
        return events

    def _close_text(self) -> list[dict[str, Any]]:
        item, self._text = self._text, None
        if item is None:
            return []
        index, part = self._output.index(item), item["content"][0]
        item["status"] = "completed"
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=[],
            ),
            self._event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        function = as_dict(call.get("function"))
        item = self._calls.get(index)
        if item is None:
            events += self._close_text()  # the text before a call is done when the call begins
            item = call_item(
                f"fc_{self.response_id[5:]}_{len(self._output)}",
                call.get("id") or "",
                function.get("name") or "",
                "",
                "in_progress",
            )
            self._calls[index] = item
            self._open_calls.append(item)
            self._output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=len(self._output) - 1, item=dict(item))
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self._output.index(item),
                    delta=arguments,
                )
            )
        return events

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(self._seq), **json.loads(json.dumps(fields))}


def sse(events: list[dict[str, Any]], encode: Callable[[Any], bytes]) -> bytes:
    """Events as Server-Sent Events, each named by its type (as the Responses API sends them)."""
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + encode(e) + b"\n\n" for e in events)
