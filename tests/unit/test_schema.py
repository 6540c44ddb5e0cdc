"""The committed contract documents are generated and must not drift: the JSON Schema and the
AsyncAPI document from proto/, the OpenAPI documents from ingress's route table and from the
gateway's protocol adapters and refusal table."""

import json
from pathlib import Path

import jsonschema
from openapi_spec_validator import validate as validate_openapi

from libs.eventlog.subjects import owner_subject
from proto import asyncapi
from proto.schema import CONTRACT, render
from proto.v1 import events, rpc, subjects
from services.gateway import errors as gateway_errors
from services.gateway import openapi as gateway_openapi
from services.gateway import protocols
from services.ingress import openapi
from services.ingress.routes import ROUTES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "proto" / "schema.json"


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


def test_committed_asyncapi_matches_proto():
    assert asyncapi.render() == (ROOT / "proto" / "asyncapi.json").read_text(), (
        "proto/asyncapi.json is out of date with proto/v1: run make schema"
    )


def test_asyncapi_has_every_event_and_every_command_and_query_with_its_reply_channel():
    document = json.loads(asyncapi.render())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    answered = [call for call in rpc.RPCS if call.subject not in subjects.OWNER_ONLY]
    assert {call.subject for call in answered} <= addresses
    for call in answered:
        operation = document["operations"][call.subject]
        assert operation["action"] == "receive"
        reply = document["channels"][operation["reply"]["channel"]["$ref"].rsplit("/", 1)[-1]]
        assert reply["address"] is None and (call.refusal is None or call.refusal.__name__ in reply["messages"])
    assert "flowplan.events.usage.{account_id}.UsageRecorded" in addresses
    assert {e.__name__ for e in asyncapi._tagged(events)} <= set(document["components"]["messages"])


def test_asyncapi_has_the_partition_owners_subjects_the_gateway_sends_to():
    document = json.loads(asyncapi.render())
    for subject in subjects.PARTITIONED:
        channel = document["channels"][f"{subject}.p.partition"]
        assert channel["address"] == f"{subject}.p.{{partition}}" and "partition" in channel["parameters"]
        sent = owner_subject(subject, "acct_42", 8)
        assert sent.removeprefix(f"{subject}.p.").isdigit(), sent
        assert document["operations"][f"{subject}.p.partition"]["action"] in {"send", "receive"}


def test_a_subject_sent_to_partition_owners_only_has_no_plain_channel():
    document = json.loads(asyncapi.render())
    for subject in subjects.OWNER_ONLY:
        assert subject not in document["channels"] and subject not in document["operations"]
        assert document["channels"][f"{subject}.p.partition"]["address"] == f"{subject}.p.{{partition}}"
        assert "forwards" not in document["channels"][f"{subject}.p.partition"]["description"]


def test_committed_openapi_matches_the_route_table():
    assert openapi.render(ROUTES) == (ROOT / "services" / "ingress" / "openapi.json").read_text(), (
        "services/ingress/openapi.json is out of date with ingress's route table: run make schema"
    )


def test_openapi_documents_every_route_with_who_may_call_it_and_the_refusals_of_what_it_asks():
    document = json.loads(openapi.render(ROUTES))
    assert document["openapi"] == "3.1.0"
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["security"] == openapi.SECURITY[route.who]
        for call in route.asks:
            assert {str(s) for s in call.status.values() if s < 500} <= set(operation["responses"])
    refund = document["paths"]["/v1/refunds/{refund_id}"]["get"]["responses"]
    assert {"401", "403", "404", "503"} <= set(refund)
    assert document["paths"]["/v1/keys"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewKey"
    }


def test_the_asyncapi_document_is_valid_asyncapi_3_0():
    """Against the specification's own JSON Schema (schemas/asyncapi-3.0.0.json: schemas/3.0.0.json of
    the npm package @asyncapi/specs 6.11.1, Apache-2.0)."""
    specification = json.loads((ROOT / "tests" / "unit" / "schemas" / "asyncapi-3.0.0.json").read_text())
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in jsonschema.Draft7Validator(specification)
              .iter_errors(json.loads(asyncapi.render()))]  # fmt: skip
    assert errors == []


def test_the_openapi_document_is_valid_openapi_3_1():
    validate_openapi(json.loads(openapi.render(ROUTES)))


def test_committed_gateway_openapi_matches_its_protocols_and_refusals():
    assert gateway_openapi.render() == (ROOT / "services" / "gateway" / "openapi.json").read_text(), (
        "services/gateway/openapi.json is out of date with the gateway's protocols or refusals: run make schema"
    )


def test_the_gateway_openapi_document_is_valid_and_says_what_the_gateway_adds():
    document = json.loads(gateway_openapi.render())
    validate_openapi(document)
    for protocol in protocols.BY_NAME.values():
        operation = document["paths"][protocol.path]["post"]
        assert operation["security"] == gateway_openapi.SECURITY
        ok = operation["responses"]["200"]
        assert {"x-flowplan-billing-mode", "x-flowplan-flows-remaining", "x-flowplan-window-resets-at"} <= set(
            ok["headers"]
        )
        assert ("text/event-stream" in ok["content"]) == protocol.streams
        shape = "AnthropicError" if protocol.api == "anthropic" else "OpenAIError"
        for status, code in (
            ("401", "invalid_api_key"),
            ("403", "model_not_in_plan"),
            ("402", "insufficient_balance"),
            ("429", "rate_limit_exceeded"),
            ("429", "quota_exhausted"),
        ):  # SPEC §4's refusals
            answer = operation["responses"][status]
            assert f"`{code}`" in answer["description"]
            assert answer["content"]["application/json"]["schema"]["$ref"].endswith(shape)
        assert "retry-after" in operation["responses"]["429"]["headers"]
    codes = document["components"]["schemas"]["OpenAIError"]["properties"]["error"]["properties"]["code"]["enum"]
    assert codes == list(gateway_errors.REFUSALS)
    assert document["paths"]["/openapi.json"]["get"]["security"] == []
