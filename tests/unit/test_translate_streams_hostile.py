"""Every translation reads whatever an upstream sends without raising: an event or an answer of a
shape no provider documents (a number where a list goes, a list where an object or a text goes) is
translated as far as it can be or skipped, and the stream ends as translations end. A raise in a
stream cuts the client's stream (services/gateway/meter.py bills what was counted and closes it); in
a whole answer, billed before it is translated, it would answer 500 for a call that was paid for."""

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.gateway.translate import Translation, plan
from services.gateway.usage import Tokens

BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    "/v1/messages": {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    "/v1/responses": {"model": "m", "input": "hi", "stream": True},
}
SPEAKS = [frozenset({"chat"}), frozenset({"messages"}), frozenset({"responses"})]
TRANSLATIONS = [
    (path, speaks, translation)
    for path, body in BODIES.items()
    for speaks in SPEAKS
    if isinstance(translation := plan(path, body, speaks), Translation)
]
FIELDS = ["choices", "delta", "content", "tool_calls", "index", "function", "arguments", "name", "id",
          "finish_reason", "type", "message", "content_block", "usage", "response", "output", "item",
          "output_index", "item_id", "text", "partial_json", "stop_reason", "status", "role", "refusal",
          "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "call_id", "error"]  # fmt: skip
TYPES = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
         "message_stop", "text_delta", "input_json_delta", "tool_use", "text", "response.created",
         "response.output_text.delta", "response.output_item.added", "response.function_call_arguments.delta",
         "response.output_item.done", "response.completed", "response.incomplete", "response.failed",
         "function_call", "message", "output_text"]  # fmt: skip

leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(TYPES), st.text(max_size=3))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
    max_leaves=12,
)
events = st.one_of(st.none(), st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))


def test_every_translation_of_a_stream_is_covered() -> None:
    assert len(TRANSLATIONS) == 6  # each of the three protocols over each of the other two


@settings(max_examples=1000, deadline=None)
@given(which=st.integers(0, 5), stream=st.lists(events, max_size=6))
@example(which=4, stream=[{"choices": [{"delta": {"tool_calls": 5}}]}])  # each raised before (TypeError)
@example(which=2, stream=[{"choices": True}])
@example(which=2, stream=[{"choices": [{"finish_reason": [None]}]}])
@example(which=2, stream=[{"choices": [{"delta": {"tool_calls": [{"index": []}, 7]}}]}])
@example(which=4, stream=[{"choices": [{"finish_reason": {}}]}])
def test_a_stream_translation_never_raises_on_what_an_upstream_sends(which: int, stream: list[Any]) -> None:
    path, speaks, translation = TRANSLATIONS[which]
    translator = translation.stream("call", 0)
    out = b"".join(translator.feed(event) for event in stream)
    out += translator.finish(Tokens(input=3, output=2))
    assert isinstance(out, bytes), (path, speaks)


@settings(max_examples=1000, deadline=None)
@given(which=st.integers(0, 5), answer=st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))
@example(which=0, answer={"stop_reason": [None]})  # each raised before (TypeError)
@example(which=0, answer={"content": [{"type": "text", "text": 5}]})
@example(which=2, answer={"choices": [{"finish_reason": [1]}]})
def test_an_answer_translation_never_raises_on_what_an_upstream_answers(which: int, answer: dict[str, Any]) -> None:
    """A whole answer is billed before it is translated (meter.whole): a raise here would answer 500
    for a call the account paid for."""
    path, speaks, translation = TRANSLATIONS[which]
    assert isinstance(translation.answer(answer, "call", 0, Tokens(input=3, output=2)), dict), (path, speaks)
