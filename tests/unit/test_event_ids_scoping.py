"""Usage event ids are scoped by ingest client and account (issue 10, item 9), without servers."""

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from libs.pricing.catalog import load_catalog
from proto.v1 import AccountCreated
from services.billing.domain import event_id as billing_event_id
from services.ingress import admin, views
from services.ingress.directory import Directory
from services.ingress.usage import (
    DEFAULT_CLIENT,
    EventId,
    client_event_id,
    client_of,
    decode_batch,
    ingest_clients,
    price_batch,
    stored_event_id,
)

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_the_ingest_token_is_the_default_client_and_more_are_named() -> None:
    clients = ingest_clients("tok-default", " partner=tok-p , eu-meter=tok-eu,")
    assert clients == {"tok-default": DEFAULT_CLIENT, "tok-p": "partner", "tok-eu": "eu-meter"}
    assert client_of("tok-p", clients) == "partner"
    assert client_of("tok-default", clients) == "default"
    assert client_of("tok-", clients) is None
    assert ingest_clients("tok", "") == {"tok": "default"}


@pytest.mark.parametrize(
    "named",
    [
        "partner",
        "partner=",
        "=tok",
        "Partner=tok",
        "a/b=tok",
        "default=tok2",
        "p=tok,q=tok",
        "p=t1,p=t2",
        "x=tok-default",
    ],
)
def test_bad_named_tokens_stop_the_start(named: str) -> None:
    with pytest.raises(ValueError, match="FLOWPLAN_INGEST_TOKENS"):
        ingest_clients("tok-default", named)


def test_stored_ids_are_scoped_and_the_listing_shows_the_clients_own() -> None:
    a = stored_event_id("default", "acc_a", "1")
    assert len({a, stored_event_id("partner", "acc_a", "1"), stored_event_id("default", "acc_b", "1")}) == 3
    assert client_event_id(a) == "1"
    assert client_event_id("gw_0123abcd") == "gw_0123abcd"  # the gateway's own ids are shown as they are


def test_no_client_id_can_equal_a_derived_one() -> None:
    """Derived ids (uuids of top-ups, payments, refunds; the gateway's gw_…) hold no "/", which every
    stored client id does; and a client cannot send a "/" in its event_id."""
    pattern = re.compile(EventId.__metadata__[0].pattern)  # type: ignore[attr-defined]
    assert not pattern.match("default/acc_a/1")
    derived = [billing_event_id("topup", "acc_a", "r"), str(uuid.uuid4()), f"gw_{uuid.uuid4().hex}"]
    assert all("/" not in d for d in derived)
    assert all("/" in stored_event_id("default", "acc_a", d) for d in derived)


def test_a_priced_record_carries_its_scoped_id_and_one_batch_may_name_two_accounts() -> None:
    catalog = load_catalog()
    directory = Directory(catalog.default_usd_per_flow)
    for account in ("acc_a", "acc_b"):
        directory.apply(
            AccountCreated(event_id=account, account_id=account, occurred_at=NOW - timedelta(days=1), name="x")
        )
    record = {"event_id": "1", "model": "deepseek/deepseek-chat", "input_tokens": 1, "output_tokens": 1,
              "billing_mode": "subscription", "occurred_at": "2026-11-30T11:00:00Z"}  # fmt: skip
    raw = json.dumps({"events": [{**record, "account_id": "acc_a"}, {**record, "account_id": "acc_b"}]}).encode()
    a, b = price_batch(
        decode_batch(raw, 10), catalog, directory, NOW, timedelta(days=8), timedelta(minutes=5), "partner"
    )
    assert (a.event_id, b.event_id) == ("partner/acc_a/1", "partner/acc_b/1")
    assert views.usage_event(a)["event_id"] == "1"


def test_an_idempotency_key_is_the_top_ups_ref() -> None:
    assert admin.top_up_command("acc_a", admin.TopUpIn(amount_usd="5"), "k-1").topup_ref == "k-1"
    assert admin.top_up_command("acc_a", admin.TopUpIn(amount_usd="5", topup_ref="k-1"), "k-1").topup_ref == "k-1"
    assert admin.top_up_command("acc_a", admin.TopUpIn(amount_usd="5")).topup_ref is None
    for key, body in [("", admin.TopUpIn(amount_usd="5")), ("k\n", admin.TopUpIn(amount_usd="5")),
                      ("k-2", admin.TopUpIn(amount_usd="5", topup_ref="k-1"))]:  # fmt: skip
        with pytest.raises(admin.ApiError) as caught:
            admin.top_up_command("acc_a", body, key)
        assert (caught.value.status, caught.value.field) == (400, "Idempotency-Key")
