"""The events export line format and the server-side filters, without a server."""

from datetime import UTC, datetime

import pytest

from libs.ops import OpsError
from libs.ops.events import Selection, event_subjects, line, parse
from libs.ops.logreader import Stored
from proto.v1 import AccountCreated, encode

CREATED = AccountCreated(event_id="e1", account_id="acc_1", occurred_at=datetime(2026, 1, 2, tzinfo=UTC), name="n")
STORED_AT = datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)


def test_a_line_carries_the_stored_bytes_and_parses_back_to_the_event() -> None:
    data = encode(CREATED)
    text = line(Stored(7, "flowplan.p.1.account.acc_1.AccountCreated", STORED_AT, data, {}))
    assert text.startswith(b'{"seq":7,"subject":"flowplan.p.1.account.acc_1.AccountCreated","stored_at":"2026-')
    assert text.endswith(b',"event":' + data + b"}")
    assert parse([text, b"\n"]) == [CREATED]


def test_a_payload_that_is_not_json_is_exported_as_text_and_refused_on_import() -> None:
    text = line(Stored(3, "flowplan.p.0.usage.acc_1.UsageRecorded", STORED_AT, b'{"type": "Usa', {}))
    assert b'"unreadable":"{\\"type\\": \\"Usa"' in text
    with pytest.raises(OpsError, match="line 2: a payload that was not JSON"):
        parse([line(Stored(2, "s", STORED_AT, encode(CREATED), {})), text])


def test_filters_become_stored_subjects_for_every_account_and_type_pair() -> None:
    assert event_subjects(Selection()) == ["flowplan.p.*.*.*.*"]
    assert event_subjects(Selection(accounts=("a", "b"), types=("UsageRecorded", "PlanChanged"))) == [
        "flowplan.p.*.usage.a.UsageRecorded",
        "flowplan.p.*.account.a.PlanChanged",
        "flowplan.p.*.usage.b.UsageRecorded",
        "flowplan.p.*.account.b.PlanChanged",
    ]
