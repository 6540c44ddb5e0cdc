"""Refusals in each SDK's own error shape, so the official SDKs raise their typed exceptions
(401 AuthenticationError, 403 PermissionDeniedError, 429 RateLimitError, 402 APIStatusError)."""

from typing import Literal

from aiohttp import web

from libs.web import json_response

Api = Literal["openai", "anthropic"]

# our code -> (HTTP status, OpenAI error type, Anthropic error type)
REFUSALS: dict[str, tuple[int, str, str]] = {
    "invalid_api_key": (401, "invalid_request_error", "authentication_error"),
    "model_not_in_plan": (403, "permission_error", "permission_error"),
    "unknown_model": (404, "invalid_request_error", "not_found_error"),
    "unknown_account": (403, "permission_error", "permission_error"),
    "insufficient_scope": (403, "permission_error", "permission_error"),
    "account_suspended": (403, "permission_error", "permission_error"),
    "rate_limit_exceeded": (429, "rate_limit_error", "rate_limit_error"),
    "quota_exhausted": (429, "insufficient_quota", "rate_limit_error"),
    "insufficient_balance": (402, "insufficient_balance", "billing_error"),
    "invalid_request": (400, "invalid_request_error", "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "upstream_unavailable": (502, "api_error", "api_error"),
    "service_unavailable": (503, "api_error", "overloaded_error"),
}


def refusal(
    api: Api, code: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> web.Response:
    status, openai_type, anthropic_type = REFUSALS[code]
    if api == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": anthropic_type, "message": message, "code": code},
        }
    else:
        body = {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return json_response(body, status, headers=headers)
