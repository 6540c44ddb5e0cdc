"""POST /v1/usage body validation: a 400 (or 413) that names the record and the field."""

import json
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from libs.pricing.catalog import load_catalog
from libs.web import ApiError, validation_error
from proto.v1 import AccountCreated, FlowRateChanged
from services.ingress.directory import Directory
from services.ingress.usage import decode_batch, price_batch

MAX_EVENTS = 5
NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
LATENESS = timedelta(days=8)
LEAD = timedelta(minutes=5)

GOOD = {
    "event_id": "evt-1",
    "account_id": "acc_demo",
    "model": "anthropic/claude-3.5-sonnet",
    "input_tokens": 1000,
    "output_tokens": 500,
    "billing_mode": "subscription",
    "occurred_at": "2025-06-10T11:00:00Z",
}
DROP = object()


def record(i: int = 0, **changes):
    r = dict(GOOD, event_id=f"evt-{i}")
    for key, value in changes.items():
        if value is DROP:
            r.pop(key)
        else:
            r[key] = value
    return r


def body(*records) -> bytes:
    return json.dumps({"events": list(records)}).encode()


def refused(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_batch(raw, MAX_EVENTS)
    return caught.value


def test_a_good_batch_decodes():
    events = decode_batch(body(record(0), record(1, key_id="key_1", cached_tokens=10, images=0)), MAX_EVENTS)
    assert [e.event_id for e in events] == ["evt-0", "evt-1"]
    assert events[0].occurred_at == datetime(2025, 6, 10, 11, 0, tzinfo=UTC)
    assert events[0].cached_tokens == 0 and events[0].images == 0 and events[0].key_id is None
    assert events[1].key_id == "key_1"
    assert events[1].cached_tokens == 10


def test_exactly_max_events_is_accepted():
    assert len(decode_batch(body(*(record(i) for i in range(MAX_EVENTS))), MAX_EVENTS)) == MAX_EVENTS


BAD_RECORDS = [
    ("negative tokens", [record(input_tokens=-1)], "events[0].input_tokens"),
    ("tokens as string", [record(input_tokens="1")], "events[0].input_tokens"),
    ("fractional tokens", [record(input_tokens=1.5)], "events[0].input_tokens"),
    ("boolean tokens", [record(output_tokens=True)], "events[0].output_tokens"),
    ("too many tokens", [record(input_tokens=100_000_001)], "events[0].input_tokens"),
    ("negative cached", [record(cached_tokens=-5)], "events[0].cached_tokens"),
    ("too many images", [record(images=1001)], "events[0].images"),
    (
        "bad billing mode in the third record",
        [record(0), record(1), record(2, billing_mode="free")],
        "events[2].billing_mode",
    ),
    ("null billing mode", [record(billing_mode=None)], "events[0].billing_mode"),
    ("naive datetime", [record(occurred_at="2025-06-10T11:00:00")], "events[0].occurred_at"),
    ("not a datetime", [record(occurred_at="yesterday")], "events[0].occurred_at"),
    ("unknown field", [record(bogus=1)], "events[0].bogus"),
    ("unknown field in the second record", [record(0), record(1, bogus=1)], "events[1].bogus"),
    ("missing model", [record(model=DROP)], "events[0].model"),
    ("missing event id in the second record", [record(0), record(1, event_id=DROP)], "events[1].event_id"),
    ("empty model", [record(model="")], "events[0].model"),
    ("empty event id", [record(event_id="")], "events[0].event_id"),
    ("event id with a space", [record(event_id="a b")], "events[0].event_id"),
    ("event id too long", [record(event_id="x" * 129)], "events[0].event_id"),
    ("account id not a subject token", [record(account_id="acc.demo")], "events[0].account_id"),
    ("empty key id", [record(key_id="")], "events[0].key_id"),
    ("record not an object", [record(0), 5], "events[1]"),
]


@pytest.mark.parametrize(("records", "field"), [(r, f) for _, r, f in BAD_RECORDS], ids=[n for n, _, _ in BAD_RECORDS])
def test_bad_record_names_the_record_and_field(records, field):
    error = refused(body(*records))
    assert error.status == 400
    assert error.code == "invalid_request"
    assert error.field == field
    index = field.split("[", 1)[1].split("]", 1)[0]
    assert error.message.startswith(f"record {index}: {field}: ")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"events": []}', "events"),
        (b"{}", "events"),
        (b'{"events": {}}', "events"),
        (b'{"events": null}', "events"),
        (json.dumps({"events": [GOOD], "extra": 1}).encode(), "extra"),
    ],
    ids=["empty events", "no events", "events not a list", "events null", "unknown top-level field"],
)
def test_bad_batch_names_the_field(raw, field):
    error = refused(raw)
    assert error.status == 400
    assert error.field == field


def test_empty_events_message():
    error = refused(b'{"events": []}')
    assert error.code == "invalid_request"
    assert "at least one" in error.message


def test_too_many_events_is_413():
    error = refused(body(*(record(i) for i in range(MAX_EVENTS + 1))))
    assert error.status == 413
    assert error.code == "batch_too_large"
    assert error.field == "events"
    assert str(MAX_EVENTS) in error.message


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"events": [', b"\xe9"])
def test_malformed_json_is_a_400_without_a_field(raw):
    error = refused(raw)
    assert (error.status, error.code, error.field) == (400, "invalid_json", None)


def test_body_that_is_not_an_object():
    error = refused(b"[]")
    assert (error.status, error.code, error.field) == (400, "invalid_request", None)
    assert error.message.startswith("body: ")


# --- validation_error: msgspec's message to a field path -----------------------------------


@pytest.mark.parametrize(
    ("message", "field", "text"),
    [
        (
            "Expected `int`, got `str` - at `$.events[3].input_tokens`",
            "events[3].input_tokens",
            "record 3: events[3].input_tokens: Expected `int`, got `str`",
        ),
        (
            "Object contains unknown field `bogus` - at `$.events[0]`",
            "events[0].bogus",
            "record 0: events[0].bogus: Object contains unknown field `bogus`",
        ),
        (
            "Object missing required field `model` - at `$.events[12]`",
            "events[12].model",
            "record 12: events[12].model: Object missing required field `model`",
        ),
        (
            "Object missing required field `events`",
            "events",
            "events: Object missing required field `events`",
        ),
        ("Object contains unknown field `x`", "x", "x: Object contains unknown field `x`"),
        ("Expected `object`, got `array`", None, "body: Expected `object`, got `array`"),
        ("Expected `str`, got `int` - at `$.name`", "name", "name: Expected `str`, got `int`"),
    ],
)
def test_validation_error_turns_msgspec_paths_into_fields(message, field, text):
    error = validation_error(message)
    assert (error.status, error.code) == (400, "invalid_request")
    assert error.field == field
    assert error.message == text


def test_api_error_response_body():
    response = ApiError(400, "invalid_request", "record 0: events[0].model: bad", "events[0].model").response()
    assert response.status == 400
    assert response.content_type == "application/json"
    assert json.loads(response.body) == {
        "error": {
            "code": "invalid_request",
            "message": "record 0: events[0].model: bad",
            "field": "events[0].model",
        }
    }
    no_field = ApiError(413, "payload_too_large", "too large").response()
    assert json.loads(no_field.body) == {"error": {"code": "payload_too_large", "message": "too large"}}


# --- price_batch: what the types cannot check (catalog, accounts, time bounds) ---------------


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture
def directory(catalog):
    d = Directory(catalog.default_usd_per_flow)
    d.apply(AccountCreated(event_id="a1", account_id="acc_demo", occurred_at=NOW - timedelta(days=30), name="Demo"))
    return d


def price(records, catalog, directory):
    return price_batch(decode_batch(body(*records), MAX_EVENTS), catalog, directory, NOW, LATENESS, LEAD)


def test_price_batch_prices_at_the_rate_in_force_at_event_time(catalog, directory):
    directory.apply(FlowRateChanged(event_id="r1", occurred_at=NOW - timedelta(hours=2), usd_per_flow="3/100"))
    before, after = price(
        [record(0, occurred_at="2025-06-10T09:00:00Z"), record(1, occurred_at="2025-06-10T11:00:00Z")],
        catalog,
        directory,
    )
    assert (before.usd_cost_micros, before.flows_micros) == (10_500, 425_800)  # at 1/39.6
    assert Fraction(before.usd_per_flow) == Fraction(10, 396)
    assert (after.usd_cost_micros, after.flows_micros) == (10_500, 360_000)  # 0.0105 / 0.03 + 0.01
    assert after.usd_per_flow == "3/100"
    assert after.multiplier == "1"
    assert after.source == "ingress"


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([record(0), record(1, model="nope/nope")], "events[1].model"),
        ([record(0, account_id="acc_nobody")], "events[0].account_id"),
        ([record(0), record(0)], "events[1].event_id"),  # the same event id twice in one batch
        ([record(0, occurred_at="2025-06-02T11:59:59Z")], "events[0].occurred_at"),  # older than 8 days
        ([record(0, occurred_at="2025-06-10T12:05:01Z")], "events[0].occurred_at"),  # over 5 min ahead
        ([record(0, images=1)], "events[0].images"),  # a chat model does not make images
    ],
    ids=["unknown model", "unknown account", "duplicate id", "too old", "too far ahead", "images on chat"],
)
def test_price_batch_names_the_record_and_field(records, field, catalog, directory):
    with pytest.raises(ApiError) as caught:
        price(records, catalog, directory)
    assert caught.value.status == 400
    assert caught.value.field == field


def test_price_batch_time_bounds_are_inclusive(catalog, directory):
    oldest = (NOW - LATENESS).isoformat()
    latest = (NOW + LEAD).isoformat()
    priced = price([record(0, occurred_at=oldest), record(1, occurred_at=latest)], catalog, directory)
    assert [p.occurred_at for p in priced] == [NOW - LATENESS, NOW + LEAD]


def test_price_batch_accepts_other_timezones_and_keeps_the_instant(catalog, directory):
    (priced,) = price([record(0, occurred_at="2025-06-10T19:00:00+08:00")], catalog, directory)
    assert priced.occurred_at == datetime(2025, 6, 10, 11, 0, tzinfo=UTC)
