"""aiohttp plumbing every HTTP service shares: JSON errors, /healthz, /metrics."""

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from libs.observability import prometheus_text

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
T = TypeVar("T")
_PATH = re.compile(r"- at `\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]+)`")
_INDEX = re.compile(r"^events\[(?P<index>\d+)\]")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


class ApiError(Exception):
    """An error the client caused or must know of, with the field at fault when there is one."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, *, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.reason = status, code, message, field, reason

    def response(self) -> web.Response:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.reason is not None:
            error["reason"] = self.reason
        return json_response({"error": error}, self.status)


@web.middleware
async def api_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "payload_too_large", "request body is too large").response()
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = exc.reason.lower().replace(" ", "_")
            return ApiError(exc.status, code, exc.reason).response()
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal_error", "unexpected error; it has been logged").response()


def decode_body(body: bytes, type_: type[T]) -> T:
    """Decode a JSON body strictly; a 400 names the field at fault (`events[3].input_tokens`)."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc


def validation_error(message: str) -> ApiError:
    """Turn msgspec's "... - at `$.events[3].model`" into a 400 with field="events[3].model"."""
    path = match.group("path") if (match := _PATH.search(message)) else ""
    if named := _NAMED.search(message):
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    text = _PATH.sub("", message).strip()
    index = _INDEX.match(path)
    where = f"record {index.group('index')}: " if index else ""
    return ApiError(400, "invalid_request", f"{where}{path or 'body'}: {text}", path or None)


HealthCheck = Callable[[], Awaitable[dict[str, bool]]]


def add_ops_routes(app: web.Application, health: HealthCheck) -> None:
    async def healthz(_: web.Request) -> web.Response:
        checks = await health()
        return json_response({"ok": all(checks.values()), **checks}, 200 if all(checks.values()) else 503)

    app.router.add_get("/healthz", healthz)
    add_metrics_route(app)


def add_metrics_route(app: web.Application) -> None:
    async def metrics_route(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_text(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/metrics", metrics_route)


async def start_site(app: web.Application, host: str, port: int, **server_options: Any) -> web.AppRunner:
    """`server_options` go to aiohttp's request handler (keepalive_timeout, max_field_size, ...)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, **server_options)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
