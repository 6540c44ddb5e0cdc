"""Every answer but a success in each SDK's own error shape, so the official SDKs raise their
typed exceptions (401 AuthenticationError, 403 PermissionDeniedError, 429 RateLimitError, 402
APIStatusError): our refusals, the server's own (unknown route, wrong method, body too large),
anything unexpected, and what an upstream answered (mapped, never passed on verbatim: it can
carry the operator's organisation ids or masked upstream keys)."""

import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from aiohttp import web

from libs.web import json_response

log = logging.getLogger(__name__)
Api = Literal["openai", "anthropic"]
REQUEST_ID = "x-request-id"
_REQUEST_ID_KEY = web.RequestKey("request_id", str)

# our code -> (HTTP status, OpenAI error type, Anthropic error type)
REFUSALS: dict[str, tuple[int, str, str]] = {
    "invalid_api_key": (401, "invalid_request_error", "authentication_error"),
    "model_not_in_plan": (403, "permission_error", "permission_error"),
    "unknown_model": (404, "invalid_request_error", "not_found_error"),
    "unknown_account": (403, "permission_error", "permission_error"),
    "insufficient_scope": (403, "permission_error", "permission_error"),
    "account_suspended": (403, "permission_error", "permission_error"),
    "rate_limit_exceeded": (429, "rate_limit_error", "rate_limit_error"),
    "too_many_unknown_keys": (429, "rate_limit_error", "rate_limit_error"),
    "quota_exhausted": (429, "insufficient_quota", "rate_limit_error"),
    "insufficient_balance": (402, "insufficient_balance", "billing_error"),
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "request_timeout": (408, "invalid_request_error", "timeout_error"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "not_found": (404, "invalid_request_error", "not_found_error"),
    "method_not_allowed": (405, "invalid_request_error", "invalid_request_error"),
    "internal_error": (500, "api_error", "api_error"),
    "upstream_rejected": (400, "invalid_request_error", "invalid_request_error"),
    "upstream_rate_limited": (429, "rate_limit_error", "rate_limit_error"),
    "upstream_unavailable": (502, "api_error", "api_error"),
    "service_unavailable": (503, "api_error", "overloaded_error"),
}
# A server error of aiohttp's own (raised before or around a handler) -> our code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large"}
_RETRY_AFTER = re.compile(r"^\d{1,6}(\.\d{1,3})?$")


def refusal(
    api: Api,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    status: int | None = None,
) -> web.Response:
    default_status, openai_type, anthropic_type = REFUSALS[code]
    if api == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_type, "message": message, "code": code},
        }
    else:
        body = {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return json_response(body, status or default_status, headers=headers)


def api_of(request: web.BaseRequest) -> Api:
    """Which SDK is asking, for an error no route has decided on yet."""
    anthropic = request.path.startswith("/v1/messages") or "anthropic-version" in request.headers
    return "anthropic" if anthropic else "openai"


def request_id(request: web.BaseRequest) -> str:
    """The id this request's answer carries (`x-request-id`) and its log lines name."""
    rid = request.get(_REQUEST_ID_KEY)
    if rid is None:
        rid = request[_REQUEST_ID_KEY] = f"req_{os.urandom(16).hex()}"  # every answer: no UUID object
    return rid


def upstream_failure(api: Api, status: int, upstream_headers: Mapping[str, str], rid: str) -> web.Response:
    """An upstream's non-200 answer as the client's API says it, with a message of our own
    (`upstream_headers` case-insensitive, as aiohttp gives them):
    a client error stays a client error (429 keeps its retry-after), a rejection of the gateway's
    own upstream credentials or any server error is a 502."""
    if status == 429:
        headers = {}
        retry_after = upstream_headers.get("retry-after", "").strip()
        if _RETRY_AFTER.match(retry_after):
            headers["retry-after"] = retry_after
        message = f"The upstream provider is rate limiting; retry later (request id {rid})."
        return refusal(api, "upstream_rate_limited", message, headers)
    if 400 <= status < 500 and status not in (401, 403, 407):
        message = f"The upstream provider refused the request (HTTP {status}); check its parameters (request id {rid})."
        return refusal(api, "upstream_rejected", message, status=status)
    message = f"The upstream provider failed (HTTP {status}); retry later (request id {rid})."
    return refusal(api, "upstream_unavailable", message)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault(REQUEST_ID, request_id(request))


@web.middleware
async def sdk_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The server's own errors (unknown route, wrong method, body too large, a bug) in the SDK's shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid_request" if exc.status < 500 else "internal_error")
        message = {
            404: f"Unknown route {request.path}: see GET /v1/models and the API reference.",
            405: f"{request.method} is not allowed on {request.path}.",
            413: exc.text or exc.reason,
        }.get(exc.status, exc.reason)
        headers = {"allow": exc.headers["allow"]} if "allow" in exc.headers else None
        return refusal(api_of(request), code, message, headers, status=exc.status)
    except Exception:
        rid = request_id(request)
        log.exception("unhandled error on %s %s (request id %s)", request.method, request.path, rid)
        message = f"Unexpected error; it has been logged (request id {rid})."
        return refusal(api_of(request), "internal_error", message)


def install(app: web.Application) -> None:
    """Every answer of the app carries a request id and fails in the SDK's shape."""
    app.middlewares.append(sdk_errors)
    app.on_response_prepare.append(_stamp_request_id)
