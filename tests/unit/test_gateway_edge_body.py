"""The gateway reads a call's body the way the upstream will, or refuses it with the field."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.body import BodyError, parse_body, shape

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{}\n é'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@given(st.dictionaries(st.text(alphabet='ab"\\:{', max_size=4), json_values, max_size=5))
def test_shape_sees_the_depth_and_keys_the_parser_sees(value: dict[str, object]) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode()
    assert shape(raw, 100) == (depth_of(value), len(value))


@given(st.lists(st.tuples(st.sampled_from(["model", "stream", 'a"\\b', "x"]), json_values), min_size=1, max_size=6))
def test_shape_counts_every_key_given_also_the_repeated_ones(pairs: list[tuple[str, object]]) -> None:
    raw = ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()
    assert shape(raw, 100)[1] == len(pairs)
    refused = parse_body(raw, 100)
    if len({k for k, _ in pairs}) < len(pairs):
        assert isinstance(refused, BodyError) and refused.message.endswith("given more than once")


def test_depth_counting_stops_past_the_limit() -> None:
    assert shape(b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}", 64)[0] == 65


@pytest.mark.parametrize("raw", [b"[" * 1000, b"[" * 1000 + b"]" * 1000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_deep_nesting_is_a_clean_refusal_not_a_recursion_error(raw: bytes) -> None:
    refused = parse_body(raw, 64)
    assert isinstance(refused, BodyError)


def test_nesting_up_to_the_limit_passes_and_one_more_is_refused() -> None:
    def nested(depth: int) -> bytes:  # the body itself is level 1
        return b'{"model": "m", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

    assert isinstance(parse_body(nested(8), 8), dict)
    refused = parse_body(nested(9), 8)
    assert isinstance(refused, BodyError) and "more than 8 deep" in refused.message
    # Brackets inside strings are text, not nesting.
    assert isinstance(parse_body(b'{"model": "m", "x": "' + b"[{" * 500 + b'"}', 8), dict)


@pytest.mark.parametrize("name", ["model", "stream", "max_tokens"])
def test_a_key_given_twice_is_refused_naming_it(name: str) -> None:
    raw = f'{{"{name}": "a", "messages": [], "{name}": "b"}}'.encode()
    assert parse_body(raw, 64) == BodyError(f"{name}: given more than once", name)


def test_duplicates_inside_nested_objects_are_the_upstream_s_business() -> None:
    body = parse_body(b'{"model": "m", "metadata": {"a": 1, "a": 2}}', 64)
    assert isinstance(body, dict) and body["model"] == "m"


@pytest.mark.parametrize("stream", ["1", '"true"', '"false"', "0", "{}"])
def test_stream_must_be_a_boolean(stream: str) -> None:
    refused = parse_body(f'{{"model": "m", "stream": {stream}}}'.encode(), 64)
    assert refused == BodyError("stream: must be true or false", "stream")


@pytest.mark.parametrize("stream", ["true", "false", "null"])
def test_stream_booleans_and_null_pass(stream: str) -> None:
    assert isinstance(parse_body(f'{{"model": "m", "stream": {stream}}}'.encode(), 64), dict)


@pytest.mark.parametrize("raw", [b"", b"[1]", b'"x"', b"{", b'{"a": NaN}'])
def test_what_is_not_a_json_object_is_refused(raw: bytes) -> None:
    assert isinstance(parse_body(raw, 64), BodyError)
