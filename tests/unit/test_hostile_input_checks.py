"""The edge's checks beyond the types (issue 10, item 8), without servers: control characters and
out-of-range times in any body, numbers whose products overflow a bigint, data errors not "retry"."""

import json
import logging
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.db import UNAVAILABLE
from libs.pricing.catalog import load_catalog
from libs.web import ApiError, api_errors, check_text, decode_body, refuse_control_characters
from proto.v1 import AccountCreated, CreateKey, GetRefund, RecordPayment, TopUpBalance
from services.ingress import admin
from services.ingress.directory import Directory
from services.ingress.usage import MAX_CALL_MICROS, UsageBatch, decode_batch, price_batch

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
RECORD = {
    "event_id": "e1",
    "account_id": "acc_demo",
    "model": "openai/gpt-5.2-pro",
    "input_tokens": 1,
    "output_tokens": 1,
    "billing_mode": "subscription",
    "occurred_at": "2026-11-30T11:00:00Z",
}


def refusal(body: object, type_: type) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_body(json.dumps(body).encode(), type_)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("text", ["\x00", "a\x00", "\x1f", "\t", "\n", "\x7f", "\x85", "\x9f"])
def test_a_control_character_in_any_string_is_named(text: str) -> None:
    records = [RECORD, {**RECORD, "event_id": "e2", "key_id": f"key{text}"}]
    assert refusal({"events": records}, UsageBatch).field == "events[1].key_id"
    assert refusal({"name": text}, admin.CreateAccount).field == "name"
    assert refusal({"amount_usd": "1", "topup_ref": text}, admin.TopUpIn).field == "topup_ref"
    assert refusal({"enabled": False, "payg_key_id": text}, admin.SetExtraUsage).field == "payg_key_id"


@pytest.mark.parametrize("raw", ["\x7f", "\u0085", "\u009f"])
def test_a_raw_control_character_unescaped_in_the_body_is_named_too(raw: str) -> None:
    body = '{"name": "a' + raw + 'b"}'
    with pytest.raises(ApiError) as caught:
        decode_body(body.encode(), admin.CreateAccount)
    assert (caught.value.status, caught.value.field) == (400, "name")


def test_text_without_control_characters_passes() -> None:
    fine = 'Zoë 名前 — émoji 🚀 \\ "quoted" \u00a0'
    assert decode_body(json.dumps({"name": fine}).encode(), admin.CreateAccount).name == fine


@pytest.mark.parametrize(
    "when",
    ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "9000-01-01T00:00:00Z", "1970-01-01T00:30:00+01:00",
     "8999-12-31T23:30:00-01:00"],
)  # fmt: skip
def test_a_time_out_of_range_is_named(when: str) -> None:
    assert refusal({"events": [{**RECORD, "occurred_at": when}]}, UsageBatch).field == "events[0].occurred_at"
    assert refusal({"multiplier": "1", "effective_at": when}, admin.SetMultiplier).field == "effective_at"


def test_path_and_query_parameters_are_checked_by_name() -> None:
    check_text({"refund_id": "ref_1", "key_id": "key_ü"}, "path")
    with pytest.raises(ApiError) as caught:
        check_text({"refund_id": "\x00"}, "path")
    assert (caught.value.status, caught.value.field) == (400, "refund_id")
    with pytest.raises(ApiError) as caught:
        check_text({"a\x00": "1"}, "query")
    assert caught.value.field == "query"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: admin.create_account(admin.CreateAccount(name="x", multiplier="1e-24"), NOW), "multiplier"),
        (lambda: admin.set_multiplier("acc_a", admin.SetMultiplier(multiplier="0.001"), NOW), "multiplier"),
        (lambda: admin.set_multiplier("acc_a", admin.SetMultiplier(multiplier="101"), NOW), "multiplier"),
        (lambda: admin.set_flow_rate(admin.SetFlowRate(usd_per_flow="0.00001"), NOW), "usd_per_flow"),
        (lambda: admin.top_up_command("acc_a", admin.TopUpIn(amount_usd=10**20)), "amount_usd"),
        (lambda: admin.top_up_command("acc_a", admin.TopUpIn(amount_usd="1000000.000001")), "amount_usd"),
        (
            lambda: admin.payment_command("acc_a", admin.PaymentIn(plan="pro", amount_usd="1e20", payment_ref="r")),
            "amount_usd",
        ),
    ],
)
def test_numbers_that_would_overflow_a_bigint_are_refused(make, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        make()
    assert (caught.value.status, caught.value.field) == (400, field)


def test_the_bounds_themselves_are_accepted() -> None:
    assert admin.set_multiplier("acc_a", admin.SetMultiplier(multiplier="0.01"), NOW).multiplier == "1/100"
    assert admin.set_flow_rate(admin.SetFlowRate(usd_per_flow="1000"), NOW).usd_per_flow == "1000"
    assert admin.top_up_command("acc_a", admin.TopUpIn(amount_usd="1000000")).amount_micros == 10**12


def test_a_call_priced_past_what_a_bigint_sums_is_refused_naming_the_largest_count() -> None:
    catalog = load_catalog()
    directory = Directory(Fraction(1, 10**4))  # the cheapest Flow an operator may set
    directory.apply(
        AccountCreated(
            event_id="a", account_id="acc_demo", occurred_at=NOW - timedelta(days=1), name="d", multiplier="1/100"
        )
    )
    huge = {**RECORD, "input_tokens": 100_000_000, "output_tokens": 100_000_000, "cached_tokens": 5}
    with pytest.raises(ApiError) as caught:
        price_batch(decode_batch(json.dumps({"events": [huge]}).encode(), 10), catalog, directory, NOW,
                    timedelta(days=8), timedelta(minutes=5))  # fmt: skip
    assert caught.value.field in ("events[0].input_tokens", "events[0].output_tokens")
    small = {**RECORD, "input_tokens": 1000, "output_tokens": 1000}
    (event,) = price_batch(decode_batch(json.dumps({"events": [small]}).encode(), 10), catalog, directory, NOW,
                           timedelta(days=8), timedelta(minutes=5))  # fmt: skip
    assert 0 < event.flows_micros <= MAX_CALL_MICROS


async def test_a_database_data_error_at_ingress_is_a_500_with_a_request_id_never_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What ingress answers when Postgres refuses a value that got past the checks: its own
    middlewares (services/ingress/app.py), a handler meeting the error Postgres raises for a NUL."""

    async def stores(_: web.Request) -> web.Response:
        raise asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')

    app = web.Application(middlewares=[api_errors, refuse_control_characters])
    app.router.add_post("/v1/keys", stores)
    with caplog.at_level(logging.ERROR):
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/v1/keys", json={"name": "x"})
            body = await response.json()
    assert response.status == 500 and "retry-after" not in response.headers
    assert body["error"]["code"] == "internal_error" and body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["request_id"] in caplog.text and "0x00" in caplog.text


def test_a_data_error_is_not_an_outage_to_retry() -> None:
    assert not issubclass(asyncpg.DataError, UNAVAILABLE)
    assert not issubclass(asyncpg.CharacterNotInRepertoireError, UNAVAILABLE)
    assert not issubclass(asyncpg.NumericValueOutOfRangeError, UNAVAILABLE)
    assert issubclass(asyncpg.CannotConnectNowError, UNAVAILABLE)
    assert issubclass(ConnectionRefusedError, UNAVAILABLE)


@pytest.mark.parametrize(
    "message",
    [
        CreateKey(account_id="acc_a", name="a\x00", kind="subscription"),
        GetRefund(account_id="acc_a", refund_id="\x00"),
        RecordPayment(account_id="acc_a", plan="pro", amount_micros=1, payment_ref="\x1b[31m"),
        TopUpBalance(account_id="acc_a", amount_micros=1, topup_ref="x\x00"),
    ],
)
def test_commands_refuse_control_characters_when_decoded(message: msgspec.Struct) -> None:
    """The services' own line: a command that bypassed ingress cannot put NUL into the log."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(message), type=type(message))
