"""aiohttp plumbing every HTTP service shares: JSON errors, /healthz, /metrics."""

import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from libs.observability import prometheus_text
from libs.refusal import Refusal
from libs.rpc import Unavailable

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
T = TypeVar("T")
_PATH = re.compile(r"- at `\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]+)`")
_INDEX = re.compile(r"^events\[(?P<index>\d+)\]")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Control characters (Unicode Cc): Postgres refuses NUL in text, and none belongs in an id, a name or a ref."""
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")
_MAYBE_OUT_OF_RANGE = re.compile(rb'"(?:0\d{3}|1[0-8]\d{2}|19[0-7]\d|8999|9\d{3})-')
"""A time before EARLIEST or from LATEST on is a JSON string starting with such a year (1970 and
8999 included, for the UTC offsets that carry them across): without one, no time needs a look."""
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The times a request may name: far from datetime's limits, so that no arithmetic on them overflows."""


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


class ApiError(Refusal):
    """A Refusal as an HTTP service answers it: with its status (and the field at fault, when there is one)."""

    status: int

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, *, reason: str | None = None
    ) -> None:
        super().__init__(code, message, field, reason=reason)
        self.status = status

    def response(self) -> web.Response:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.reason is not None:
            error["reason"] = self.reason
        if self.status == 500:  # not the client's to fix: the id finds the log line
            error["request_id"] = uuid.uuid4().hex
            log.error("request %s: %s: %s", error["request_id"], self.code, self.message)
            return json_response({"error": error}, 500, headers={"x-request-id": error["request_id"]})
        return json_response({"error": error}, self.status)


@web.middleware
async def api_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except Unavailable as exc:  # another service did not answer: nothing is known, retry
        response = ApiError(503, f"{exc.service}_unavailable", f"the {exc.service} service did not answer; retry")
        return json_response({"error": {"code": response.code, "message": response.message}}, 503,
                             headers={"Retry-After": str(exc.retry_after_s)})  # fmt: skip
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "payload_too_large", "request body is too large").response()
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = exc.reason.lower().replace(" ", "_")
            return ApiError(exc.status, code, exc.reason).response()
        raise
    except Exception:
        request_id = uuid.uuid4().hex
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path, request_id)
        error = {"code": "internal_error", "message": "unexpected error; it has been logged", "request_id": request_id}
        return json_response({"error": error}, 500, headers={"x-request-id": request_id})


@web.middleware
async def refuse_control_characters(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Path parameters and query strings: a control character is a 400 naming the parameter,
    before any handler passes it on to a service or to Postgres."""
    check_text(request.match_info, "path")
    check_text(request.query, "query")
    return await handler(request)


def check_text(values: Mapping[str, str], where: str) -> None:
    """Refuse a control character in a parameter's name or value, naming the parameter."""
    for name, value in values.items():
        if CONTROL.search(name):
            raise ApiError(400, "invalid_request", f"{where}: a parameter name holds control characters", where)
        if CONTROL.search(value):
            raise ApiError(400, "invalid_request", f"{name}: control characters are not allowed", name)


def decode_body(body: bytes, type_: type[T]) -> T:
    """Decode a JSON body strictly; a 400 names the field at fault (`events[3].input_tokens`).

    Beyond the types: no string may hold a control character and no time may lie outside
    EARLIEST..LATEST, in every request body, so that nothing accepted here fails later in
    Postgres or in date arithmetic (and dead-letters in a projection)."""
    try:
        value = msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
    # A JSON body can carry a control character only as an escape, a raw DEL, or a C1 character's
    # UTF-8 bytes (JSON refuses raw C0 characters): without any, no string needs a look.
    texts = b"\\" in body or b"\x7f" in body or (b"\xc2" in body and _C1_UTF8.search(body) is not None)
    if (texts or _MAYBE_OUT_OF_RANGE.search(body)) and _suspect(value, texts):
        _check_values(value, "", texts=texts)  # the slow walk that names the field
    return value


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A struct's fields that may hold text, a time, or something to look into: the walk skips the rest."""
    texts: list[str] = []
    times: list[str] = []
    nested: list[str] = []
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        kinds = _kinds(field.type)
        for kind, names in (("text", texts), ("time", times), ("nested", nested)):
            if kind in kinds:
                names.append(field.name)
    return tuple(texts), tuple(times), tuple(nested)


def _kinds(info: msgspec.inspect.Type) -> set[str]:
    if isinstance(info, msgspec.inspect.StrType):
        return {"text"}
    if isinstance(info, msgspec.inspect.DateTimeType):
        return {"time"}
    if isinstance(info, msgspec.inspect.UnionType):
        return set().union(*(_kinds(t) for t in info.types))
    if isinstance(info, msgspec.inspect.Metadata):
        return _kinds(info.type)
    scalar = (msgspec.inspect.IntType, msgspec.inspect.FloatType, msgspec.inspect.BoolType,
              msgspec.inspect.NoneType, msgspec.inspect.LiteralType, msgspec.inspect.EnumType)  # fmt: skip
    return set() if isinstance(info, scalar) else {"nested"}


def _suspect(value: Any, texts: bool) -> bool:
    """Fast: is there a text with a control character or a time out of range anywhere in value?"""
    if isinstance(value, msgspec.Struct):
        text_fields, time_fields, nested = _fields(type(value))
        return (
            (texts and any(_suspect(getattr(value, name), texts) for name in text_fields))
            or any(_suspect(getattr(value, name), texts) for name in time_fields)
            or any(_suspect(getattr(value, name), texts) for name in nested)
        )
    if isinstance(value, str):
        return texts and CONTROL.search(value) is not None
    if isinstance(value, datetime):
        return not EARLIEST <= (value if value.tzinfo else value.replace(tzinfo=UTC)) < LATEST
    if isinstance(value, list | tuple):
        return any(_suspect(item, texts) for item in value)
    if isinstance(value, dict):
        return any(_suspect(key, texts) or _suspect(item, texts) for key, item in value.items())
    return False


def _check_values(value: Any, path: str, *, texts: bool) -> None:
    if isinstance(value, str):
        if texts and CONTROL.search(value):
            raise _bad_value(path, "control characters are not allowed")
    elif isinstance(value, datetime):
        if not EARLIEST <= (value if value.tzinfo else value.replace(tzinfo=UTC)) < LATEST:
            raise _bad_value(path, f"must lie between {EARLIEST.year} and {LATEST.year}")
    elif isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            name = field.encode_name
            _check_values(getattr(value, field.name), f"{path}.{name}" if path else name, texts=texts)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_values(item, f"{path}[{i}]", texts=texts)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, path or "body", texts=texts)
            _check_values(item, f"{path}.{key}" if path else str(key), texts=texts)


def _bad_value(path: str, message: str) -> ApiError:
    index = _INDEX.match(path)
    where = f"record {index.group('index')}: " if index else ""
    return ApiError(400, "invalid_request", f"{where}{path or 'body'}: {message}", path or None)


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
