"""The committed JSON Schema of the wire contract is generated from proto/ and must not drift."""

import json
from pathlib import Path

from proto.schema import CONTRACT, render

SCHEMA = Path(__file__).resolve().parents[2] / "proto" / "schema.json"


def test_committed_schema_matches_the_proto_structs():
    committed = SCHEMA.read_text()
    assert render() == committed, (
        "proto/schema.json is out of date with the msgspec Structs in proto/v1: run make schema"
    )


def test_schema_names_every_message_of_the_contract():
    document = json.loads(render())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {t.__name__ for t in CONTRACT} <= set(document["$defs"])
    assert len(document["oneOf"]) == len(CONTRACT)
    usage = document["$defs"]["UsageRecorded"]
    assert {"event_id", "account_id", "occurred_at", "flows_micros", "billing_mode"} <= set(usage["properties"])
