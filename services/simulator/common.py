"""What the APIs share: strict body decoding into a 400, the key check, which vendor speaks which
protocol, each model call's opening (those three, refused in the protocol's own error shape:
`ProtocolApi`), and the output pace."""

import asyncio
import hmac
import re
from collections.abc import Callable, Iterator
from itertools import islice
from typing import ClassVar, NamedTuple, TypeVar

import msgspec
from aiohttp import web

from libs.refusal import Refusal
from services.simulator.settings import SimulatorSettings

T = TypeVar("T")
MAX_TOKENS = 1_000_000
"""Largest max_tokens accepted (a bigger one is a 400), so one request cannot exhaust memory."""
MIN_TICK_S = 0.005
"""Shortest sleep between writes of a paced stream: at high rates several tokens share a write."""
BATCH = 256
"""Most tokens per write when nothing is paced."""
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


VENDOR_PROTOCOLS = {"anthropic": frozenset({"messages"}), "openai": frozenset({"chat", "responses", "images"})}
"""What each vendor's real API speaks; the other vendors speak chat completions (and images)."""
OTHER_VENDORS = frozenset({"chat", "images"})
ANY_VENDOR = "/any"
"""The prefix under which the simulator answers every model in every protocol, as an aggregator
(one endpoint for all vendors, like OpenRouter or LiteLLM) would."""


def vendor_speaks(model: str, protocol: str) -> bool:
    """Whether the vendor a model id names (`anthropic/claude-...`) answers it in this protocol;
    a bare model name (no vendor) is answered in any."""
    vendor, slash, _ = model.partition("/")
    return not slash or protocol in VENDOR_PROTOCOLS.get(vendor, OTHER_VENDORS)


class BadRequest(Refusal):
    """A request the client got wrong (a Refusal naming the parameter); each API renders it in its
    own error shape."""

    status: int

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__("invalid_request", message, param)
        self.param, self.status = param, status


def decode(decoder: "msgspec.json.Decoder[T]", body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _PATH.search(text)
        path = found.group("path") if found else ""
        text = _PATH.sub("", text)
        if missing := _MISSING.match(text):
            name = missing.group("name")
            path = f"{path}.{name}" if path else name
            text = "Field required"
        raise BadRequest(f"{path}: {text}" if path else text, path or None) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BadRequest("The request body is too large", status=413) from exc


def key_ok(request: web.Request, required: str) -> bool:
    """Any key is accepted unless FLOWPLAN_SIMULATOR_REQUIRE_KEY is set; then it must be that one."""
    if not required:
        return True
    headers = request.headers
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), required.encode()):
        return True
    return hmac.compare_digest(headers.get("x-api-key", "").encode(), required.encode())


class Refusals(NamedTuple):
    """A protocol's refusals of a call's opening, in its own error shape."""

    unauthorized: Callable[[], web.Response]
    bad_request: Callable[[BadRequest], web.Response]
    wrong_vendor: Callable[[str], web.Response]


class ProtocolApi:
    """One protocol's routes (under `/any` too, answering every vendor's models in it)."""

    refusals: ClassVar[Refusals]

    def __init__(self, settings: SimulatorSettings, any_vendor: bool = False) -> None:
        self.settings = settings
        self.any_vendor = any_vendor

    async def opening(
        self, request: web.Request, protocol: str, parse: Callable[[bytes], T], model: Callable[[T], str | None]
    ) -> T | web.Response:
        """The parsed request, or its refusal: no key, a bad body, a model its vendor does not
        answer in this protocol."""
        if not key_ok(request, self.settings.require_key):
            return self.refusals.unauthorized()
        try:
            parsed = parse(await read_body(request))
        except BadRequest as exc:
            return self.refusals.bad_request(exc)
        name = model(parsed)
        if name and not self.any_vendor and not vendor_speaks(name, protocol):
            return self.refusals.wrong_vendor(name)
        return parsed


async def generation_time(settings: SimulatorSettings, tokens: int) -> None:
    """What a non-streamed answer waits: the first token's delay, then the paced rest."""
    delay = settings.first_token_ms / 1000.0
    if settings.tokens_per_s > 0 and tokens > 1:
        delay += (tokens - 1) / settings.tokens_per_s
    if delay > 0:
        await asyncio.sleep(delay)


async def stream_out(
    request: web.Request,
    settings: SimulatorSettings,
    head: bytes,
    chunks: Iterator[bytes],
    count: int,
    tail: bytes,
) -> web.StreamResponse:
    """Send `head` at once, the `count` token chunks at the configured pace (the first after the
    first-token delay, several per write when the rate is high), then `tail`.

    Pacing follows a schedule (token i is due at t0 + i / rate) rather than sleeping per token,
    so the rate holds whatever the timer resolution; sleeps are at least MIN_TICK_S."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        pending = head
        if settings.first_token_ms > 0:
            await response.write(head)
            pending = b""
            await asyncio.sleep(settings.first_token_ms / 1000.0)
        rate = settings.tokens_per_s
        if rate <= 0:
            sent = 0
            while sent < count:
                size = min(BATCH, count - sent)
                await response.write(pending + b"".join(islice(chunks, size)))
                pending, sent = b"", sent + size
        else:
            loop = asyncio.get_running_loop()
            interval, t0, sent = 1.0 / rate, loop.time(), 0
            while sent < count:
                due = min(count, sent + BATCH, int((loop.time() - t0) / interval + 1e-6) + 1)
                if due > sent:
                    await response.write(pending + b"".join(islice(chunks, due - sent)))
                    pending, sent = b"", due
                wait = t0 + sent * interval - loop.time()
                if sent < count and wait > 0:
                    await asyncio.sleep(max(wait, MIN_TICK_S))
        await response.write(pending + tail)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing to tell it
    return response
