"""The OpenAPI 3.1 document of the gateway's HTTP API, generated from its protocol adapters
(services/gateway/protocols.py: paths, error shapes, streaming) and its refusal table
(services/gateway/errors.py: codes and statuses): `python -m services.gateway.openapi >
services/gateway/openapi.json` (`make schema`; a test fails when it drifts). Served at the
gateway's GET /openapi.json.

The request and answer bodies are each vendor's own (OpenAI's chat completions, Responses and
images; Anthropic's messages), documented by those vendors: here they are objects. What this
document says is what the gateway adds (SPEC §4): who may call (a model key), the x-flowplan-*
and rate-limit headers of an admitted answer, and the refusals, each in its SDK's error shape
with its code."""

import json
import sys
from typing import Any, get_args

from proto.v1.events import BillingMode
from services.gateway import errors, protocols

SECURITY: list[dict[str, list[str]]] = [{"bearerKey": []}, {"apiKeyHeader": []}]
"""A model key as `Authorization: Bearer` or as `x-api-key` (Anthropic's SDK), on every route."""
ADMITTED_HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "x-flowplan-billing-mode": ("subscription or payg: who pays for the call.", {"enum": list(get_args(BillingMode))}),
    "x-flowplan-flows-remaining": ("The Flows left in the 5-hour window after admission (decimal).", {}),
    "x-flowplan-window-resets-at": ("When the 5-hour window resets (RFC 3339, UTC).", {"format": "date-time"}),
    "x-flowplan-request-id": ("The call's id, as its usage event names it.", {}),
    "x-ratelimit-limit-requests": ("The plan's requests per minute.", {}),
    "x-ratelimit-remaining-requests": ("Requests left in the current minute.", {}),
    "x-ratelimit-reset-requests": ("When the minute's count resets (seconds, `1.250s`).", {}),
}
EVERY_ANSWER = {"x-request-id": "The request's id, in every answer and in the gateway's log lines."}
WITH_RETRY_AFTER = frozenset({429, 503})
_SERVER = frozenset({"not_found", "method_not_allowed"})
"""The server's own refusals (no such route, wrong method): not a route's."""
_KEY = ("invalid_api_key", "insufficient_scope", "account_suspended", "too_many_unknown_keys")
_BODY = ("invalid_request", "request_timeout", "request_too_large", "unknown_model")
_UPSTREAM = ("upstream_rejected", "upstream_rate_limited", "upstream_unavailable")
METERED_CODES = tuple(code for code in errors.REFUSALS if code not in _SERVER)
COUNT_TOKENS_CODES = (*_KEY, *_BODY, *_UPSTREAM, "service_unavailable", "internal_error")
MODELS_CODES = (*_KEY, "invalid_request", "service_unavailable", "internal_error")
ERROR_SCHEMA = {"openai": "OpenAIError", "anthropic": "AnthropicError"}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string", **schema}}


def _refusals(codes: tuple[str, ...], api: str) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(errors.REFUSALS[code][0], []).append(code)
    schema = {"$ref": f"#/components/schemas/{ERROR_SCHEMA[api]}"}
    answers: dict[str, Any] = {}
    for status, named in sorted(by_status.items()):
        headers = {name: _header(text, {}) for name, text in EVERY_ANSWER.items()}
        if status in WITH_RETRY_AFTER:
            headers["retry-after"] = _header("Seconds to wait before retrying.", {"pattern": r"^\d+(\.\d+)?$"})
        answers[str(status)] = {
            "description": "error.code: " + ", ".join(f"`{code}`" for code in named),
            "headers": headers,
            "content": {"application/json": {"schema": schema}},
        }
    if "upstream_rejected" in codes:
        answers["4XX"] = {
            "description": "error.code: `upstream_rejected`, with the status the upstream refused the request with.",
            "content": {"application/json": {"schema": schema}},
        }
    return answers


def _metered(protocol: protocols.Protocol) -> dict[str, Any]:
    headers = {name: _header(text, schema) for name, (text, schema) in ADMITTED_HEADERS.items()}
    headers |= {name: _header(text, {}) for name, text in EVERY_ANSWER.items()}
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if protocol.streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    api = "OpenAI" if protocol.api == "openai" else "Anthropic"
    return {
        "operationId": protocol.name,
        "summary": f"A metered model call in {api}'s {protocol.name} protocol"
        + (" (streamed when the body says `stream: true`)." if protocol.streams else "."),
        "tags": ["model calls"],
        "security": SECURITY,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {"description": "The model's answer, billed.", "headers": headers, "content": content},
            **_refusals(METERED_CODES, protocol.api),
        },
    }


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {p.path: {"post": _metered(p)} for p in protocols.BY_NAME.values()}
    ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/v1/models"] = {"get": {
        "operationId": "models", "tags": ["models"], "security": SECURITY,
        "summary": "The models the key may call: OpenAI's list, or Anthropic's with `anthropic-version`.",
        "responses": {"200": ok, **_refusals(MODELS_CODES, "openai")},
    }}  # fmt: skip
    counted = {"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer"}}}
    paths["/v1/messages/count_tokens"] = {"post": {
        "operationId": "count_tokens", "tags": ["models"], "security": SECURITY,
        "summary": "A prompt's input tokens (not billed, no RPM): the upstream's count, else an estimate.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "200": {
                "description": "The count.",
                "headers": {"x-flowplan-token-count": _header("Who counted.", {"enum": ["upstream", "estimate"]})},
                "content": {"application/json": {"schema": counted}},
            },
            **_refusals(COUNT_TOKENS_CODES, "anthropic"),
        },
    }}  # fmt: skip
    paths["/openapi.json"] = {"get": {
        "operationId": "openapi", "tags": ["meta"], "security": [], "summary": "This document (OpenAPI 3.1).",
        "responses": {"200": ok},
    }}  # fmt: skip
    text = {"type": "string"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowplan gateway",
            "version": "1",
            "description": "The metered model API (SPEC §4): OpenAI- and Anthropic-compatible. "
            "Generated from services/gateway/protocols.py and errors.py by services/gateway/openapi.py.",
        },
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "paths": paths,
        "components": {
            "schemas": {
                "OpenAIError": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "code"],
                            "properties": {
                                "message": text,
                                "type": text,
                                "param": {"type": ["string", "null"]},
                                "code": {"enum": list(errors.REFUSALS)},
                            },
                        }
                    },
                },
                "AnthropicError": {
                    "type": "object",
                    "required": ["type", "error"],
                    "properties": {
                        "type": {"const": "error"},
                        "error": {
                            "type": "object",
                            "required": ["type", "message", "code"],
                            "properties": {"type": text, "message": text, "code": {"enum": list(errors.REFUSALS)}},
                        },
                    },
                },
            },
            "securitySchemes": {
                "bearerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A model key (sk-ss-v1-, sk-pg-v1-); on the model calls also Studio Chat's pass.",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "A model key, as Anthropic's SDK sends it.",
                },
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
