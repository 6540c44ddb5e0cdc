"""The OpenAPI 3.1 document of ingress's HTTP API, generated from the route table (routes/__init__.py)
and the msgspec types of the bodies: `python -m services.ingress.openapi > services/ingress/openapi.json`
(`make schema`; a test fails when it drifts). Served at GET /openapi.json.

Each route says who may call it (its security scheme), its body and query, and its answers: the
success status, 401/403 for credentials, 400/413 for bad input, the 4xx of the refusals of the
commands and queries it asks (their codes' statuses are in proto/v1/rpc.py), 503 when one of them
does not answer.
"""

import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from libs.paymentwebhooks import HEADER as SIGNATURE_HEADER

if TYPE_CHECKING:
    from services.ingress.routes import Route

SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "ingest": [{"ingestToken": []}],
    "account": [{"apiKey": []}, {"managementKey": []}, {"consolePass": []}],
    "admin": [{"adminToken": []}],
    "webhook": [{"providerSignature": []}],
}
ERROR = {"$ref": "#/components/schemas/Error"}
ERROR_FIELDS = ("code", "message", "field", "reason", "request_id")
OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
DOCUMENT = web.AppKey("openapi", bytes)
"""The rendered document, kept on the app by routes.install for GET /openapi.json."""
REASONS = {
    400: "Bad input: the body, a path parameter or a query parameter (error.field names it).",
    401: "No credential, or a wrong one.",
    403: "The credential may not do this (insufficient_scope: a model key on a change), or the account is "
    "suspended (account_suspended).",
    404: "No such account, key or refund.",
    409: "Refused: see error.code (and error.reason).",
    413: "The body is too large.",
    500: "An unexpected error (request_id in the body and in x-request-id).",
    503: "A service or the event log did not answer: nothing was done; retry (Retry-After).",
}


def _operation_id(route: "Route") -> str:
    return route.handler.__name__


def _answers(route: "Route") -> dict[int, str]:
    statuses: dict[int, str] = {}
    if route.who != "public":
        statuses[401 if route.who != "webhook" else 400] = REASONS[401] if route.who != "webhook" else (
            f"A missing, forged or stale {SIGNATURE_HEADER} header, or a bad body."
        )  # fmt: skip
    if route.who == "account":
        statuses[403] = REASONS[403]
    if route.body is not None or route.query or "{" in route.path:
        statuses.setdefault(400, REASONS[400])
    if route.body is not None:
        statuses[413] = REASONS[413]
    if "{account_id}" in route.path and route.who == "admin":
        statuses[404] = REASONS[404]
    for call in route.asks:
        for status in call.status.values():
            if 400 <= status < 500:
                statuses.setdefault(status, REASONS.get(status, REASONS[409]))
    if route.asks or route.who in ("ingest", "account", "admin"):
        statuses[503] = REASONS[503]
    return statuses


def document(routes: Sequence["Route"]) -> dict[str, Any]:
    bodies = sorted({route.body for route in routes if route.body is not None}, key=lambda t: t.__name__)
    _, schemas = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "tags": [route.handler.__qualname__.split(".")[0].removesuffix("Routes").lower()],
            "security": SECURITY[route.who],
            "responses": {
                str(route.status): OK,
                **{
                    str(status): {"description": reason, "content": {"application/json": {"schema": ERROR}}}
                    for status, reason in sorted(_answers(route).items())
                },
            },
        }  # fmt: skip
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        for query in route.query:
            kind = {"type": "string", "format": "date-time"} if query.kind == "date-time" else {"type": query.kind}
            parameters.append({"name": query.name, "in": "query", "required": False, "schema": kind,
                               "description": query.description})  # fmt: skip
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {name: {"type": "string"} for name in ERROR_FIELDS},
            }
        },
    }  # fmt: skip
    bearer = {"type": "http", "scheme": "bearer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowplan ingress",
            "version": "1",
            "description": "Usage in for metering clients, the account API and the operator's API (SPEC §4). "
            "Generated from services/ingress/routes by services/ingress/openapi.py.",
        },
        "servers": [{"url": "http://127.0.0.1:8081"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ingestToken": {**bearer, "description": "A metering client's token (FLOWPLAN_INGEST_TOKEN[S])."},
                "apiKey": {**bearer, "description": "A model key (sk-ss-v1-, sk-pg-v1-): reads only."},
                "managementKey": {**bearer, "description": "A management key (sk-mg-v1-): reads and changes."},
                "consolePass": {**bearer, "description": "The console's pass for a signed-in owner."},
                "adminToken": {**bearer, "description": "FLOWPLAN_ADMIN_TOKEN."},
                "providerSignature": {"type": "apiKey", "in": "header", "name": SIGNATURE_HEADER},
            },
        },
    }


def render(routes: Sequence["Route"]) -> str:
    return json.dumps(document(routes), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    from services.ingress.routes import ROUTES

    sys.stdout.write(render(ROUTES))
