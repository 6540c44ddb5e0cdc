"""The gateway's error shapes: its own failures through the real aiohttp app machinery, and the
mapping of an upstream's failures (pure)."""

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from services.gateway import errors


async def crash(_: web.Request) -> web.Response:
    raise ValueError("a bug with a secret sk-proj-SECRET")


@pytest.fixture
async def client() -> TestClient:  # type: ignore[type-arg]
    app = web.Application()
    errors.install(app)
    app.router.add_post("/v1/chat/completions", crash)
    app.router.add_post("/v1/messages", crash)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_an_unexpected_error_is_a_500_in_the_sdk_shape_logged_under_its_request_id(
    client: TestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.post("/v1/chat/completions", data=b"{}")
    assert response.status == 500 and response.content_type == "application/json"
    body = await response.json()
    rid = response.headers["x-request-id"]
    assert body["error"]["type"] == "api_error" and rid in body["error"]["message"]
    assert "SECRET" not in json.dumps(body)
    assert rid in caplog.text and "a bug with a secret" in caplog.text
    response = await client.post("/v1/messages", data=b"{}")
    assert response.status == 500 and (await response.json())["error"]["type"] == "api_error"


async def test_unknown_routes_and_methods_answer_in_the_callers_shape(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/v1/nothing")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    response = await client.get("/v1/messages")
    body = await response.json()
    assert response.status == 405 and body["type"] == "error" and response.headers["allow"] == "POST"
    response = await client.get("/v1/models/x", headers={"anthropic-version": "2023-06-01"})
    assert (await response.json())["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("upstream", "status", "openai_type", "anthropic_type"),
    [
        (400, 400, "invalid_request_error", "invalid_request_error"),
        (404, 404, "invalid_request_error", "invalid_request_error"),
        (422, 422, "invalid_request_error", "invalid_request_error"),
        (429, 429, "rate_limit_error", "rate_limit_error"),
        (401, 502, "api_error", "api_error"),
        (403, 502, "api_error", "api_error"),
        (500, 502, "api_error", "api_error"),
        (529, 502, "api_error", "api_error"),
        (302, 502, "api_error", "api_error"),
    ],
)
def test_an_upstream_failure_keeps_its_class_and_nothing_else(
    upstream: int, status: int, openai_type: str, anthropic_type: str
) -> None:
    headers = CIMultiDict({"Retry-After": "12", "OpenAI-Organization": "org-SECRET"})
    for api, error_type in (("openai", openai_type), ("anthropic", anthropic_type)):
        response = errors.upstream_failure(api, upstream, headers, "req_1")  # type: ignore[arg-type]
        assert response.status == status
        assert response.body is not None and b"SECRET" not in response.body  # type: ignore[operator]
        body = json.loads(response.body)  # type: ignore[arg-type]
        assert body["error"]["type"] == error_type and "req_1" in body["error"]["message"]
        assert set(response.headers) <= {"retry-after", "Content-Type"}
        assert response.headers.get("retry-after") == ("12" if upstream == 429 else None)


@pytest.mark.parametrize("retry_after", ["Wed, 21 Oct 2026 07:28:00 GMT", "x\r\nSet-Cookie: a", "-1", ""])
def test_only_a_plain_number_of_seconds_is_passed_as_retry_after(retry_after: str) -> None:
    response = errors.upstream_failure("openai", 429, CIMultiDict({"retry-after": retry_after}), "req_1")
    assert "retry-after" not in response.headers
