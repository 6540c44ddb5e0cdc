"""The metering of an admitted call's answer: a whole reply or a stream read to its end (in a
task of its own, which a client hanging up does not stop), its usage read from the upstream's
own report and stored before the client gets the end of the answer; or, when the upstream
failed, its reservation released. services.gateway.pipeline hands each admitted call here."""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from nats.aio.client import Client

from libs import failpoints, tracing
from libs.eventlog.subjects import owner_subject
from libs.pricing.catalog import Model
from libs.pricing.money import parse_fraction
from libs.pricing.usage import usage_recorded
from libs.settings_views import GatewaySettings
from proto.v1 import KeyView, QuotaDecision, ReleaseReservation, UsageRecorded, encode, subjects
from services.gateway import metrics
from services.gateway.errors import Api, refusal, request_id, upstream_failure
from services.gateway.estimate import BYTES_PER_TOKEN
from services.gateway.inflight import InflightCalls
from services.gateway.protocols import Exchange
from services.gateway.recorder import RETRY_AFTER_S, UsageNotStored, UsageRecorder
from services.gateway.relay import relay
from services.gateway.usage import Tokens

log = logging.getLogger(__name__)
_json = msgspec.json.Decoder()
PASSED_HEADERS = {"content-type"}
HEAD_WAIT_S = 0.5
"""How long a stream's head waits for its first events to go out with: an upstream slow to start
does not keep its client from knowing that the call was accepted."""


@dataclass(slots=True)
class Call:
    """An admitted call, as every stage after admission sees it."""

    exchange: Exchange
    key: KeyView
    model: Model
    decision: QuotaDecision
    reservation_id: str
    started: datetime
    headers: dict[str, str]
    """The client's answer carries them, success or failure: rate limits, billing mode, Flows left."""
    client_hash: str | None = None
    agent_hash: str | None = None
    conversation_id: str | None = None
    """Set for Studio Chat's calls (services/gateway/studio.py): their usage names it, not a key."""

    @property
    def api(self) -> Api:
        return self.exchange.client.api

    @property
    def route(self) -> str:
        return self.exchange.client.path

    @property
    def call_id(self) -> str:
        """What a translated answer's id is made of: the call's own, as its usage event names it."""
        return self.reservation_id.removeprefix("gw_")


class Meter:
    """Meters admitted calls' answers and keeps the streams in progress, which a stopping
    gateway cuts (each billed for what its client was sent)."""

    def __init__(self, settings: GatewaySettings, nc: Client, recorder: UsageRecorder, inflight: InflightCalls) -> None:
        self.settings, self.nc, self.recorder, self.inflight = settings, nc, recorder, inflight
        self.pumps: set[asyncio.Task[web.StreamResponse]] = set()
        self.streams: set[_Upstream] = set()

    async def answer(
        self, request: web.Request, call: Call, response: aiohttp.ClientResponse, streaming: bool, strip_usage: bool
    ) -> web.StreamResponse:
        """The client's answer, once its usage is stored."""
        if streaming and response.status == 200:
            # The stream is read to its end and billed in a task of its own, so that nothing
            # that cancels the request's handler (a server stopping, a framework reacting to a
            # hang-up) can cut the metering short.
            pump = asyncio.create_task(self.stream(request, call, response, strip_usage))
            self.pumps.add(pump)
            pump.add_done_callback(self.pumps.discard)
            pump.add_done_callback(lambda _: self.inflight.ended(call.reservation_id))
            return await asyncio.shield(pump)
        try:
            return await self.whole(request, call, response)
        finally:
            response.release()
            self.inflight.ended(call.reservation_id)

    async def drain(self, grace_s: float) -> None:
        """Cut the streams still running (each is billed for what its client was sent) and wait
        until their usage is stored."""
        if self.streams:
            log.warning("shutdown grace of %.0f s over: cutting %d streams", grace_s, len(self.streams))
            for stream in list(self.streams):
                stream.cut()
        if self.pumps:
            await asyncio.wait(self.pumps, timeout=self.settings.usage_store_timeout_s + 10)

    # -- meter: a whole answer ----------------------------------------------------------------

    async def whole(self, request: web.Request, call: Call, response: aiohttp.ClientResponse) -> web.Response:
        try:
            payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.release(call)
            rid = request_id(request)
            log.warning("upstream for %s broke off (request id %s): %r", call.model.id, rid, exc)
            message = f"The upstream provider broke off; retry later (request id {rid})."
            failed = refusal(call.api, "upstream_unavailable", message)
            count(call, failed.status)
            return failed
        if response.status != 200:
            await self.release(call)
            rid = request_id(request)
            log.warning(
                "upstream answered %d for %s (request id %s, account %s): headers %s body %r",
                response.status, call.model.id, rid, call.key.account_id,
                dict(response.headers), payload[:4096],
            )  # fmt: skip
            failed = upstream_failure(call.api, response.status, response.headers, rid)
            failed.headers.update(call.headers)
            count(call, failed.status)
            return failed
        # Only what describes the body goes on: an upstream's ids, org and rate-limit headers stay here.
        headers = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
        headers.update(call.headers)
        try:
            data = _json.decode(payload)
        except msgspec.DecodeError:
            data = {}
        tokens = call.exchange.upstream.tokens(data)
        try:
            await self.record(call, tokens)
        except UsageNotStored:
            return await self.unrecorded(call)
        count(call, 200)
        headers["x-flowplan-request-id"] = call.reservation_id
        payload = call.exchange.answer(data, payload, call.call_id, int(call.started.timestamp()), tokens)
        return web.Response(body=payload, status=200, headers=headers)

    # -- meter: a stream ------------------------------------------------------------------------

    async def stream(
        self, request: web.Request, call: Call, response: aiohttp.ClientResponse, strip_usage: bool
    ) -> web.StreamResponse:
        out = _EventStream(status=200)
        out.headers["content-type"] = response.headers.get("content-type", "text/event-stream")
        out.headers["cache-control"] = "no-cache"
        out.headers.update(call.headers)
        out.headers["x-flowplan-request-id"] = call.reservation_id
        try:
            return await self._pump(request, call, response, strip_usage, out)
        finally:
            response.release()

    async def _pump(
        self,
        request: web.Request,
        call: Call,
        response: aiohttp.ClientResponse,
        strip_usage: bool,
        out: web.StreamResponse,
    ) -> web.StreamResponse:
        translator = call.exchange.stream(call.call_id, int(call.started.timestamp()))
        if translator is not None:
            out.headers["content-type"] = "text/event-stream"
        usage = call.exchange.upstream.meter()
        passed = relay(call.exchange.client, usage, strip_usage, translator)
        upstream = _Upstream(response)
        client_gone = False
        try:
            await out.prepare(request)
        except (ConnectionError, RuntimeError):
            client_gone = True
        # Every other event goes on to the client the moment it is whole; the usage is read on the
        # side. A client that hangs up does not stop the reading: the upstream generates (and bills)
        # on. A stopping gateway that cuts the stream stops it: the client is billed for what it got.
        self.streams.add(upstream)
        unreadable = False
        try:
            async for chunk in response.content.iter_any():
                if failpoints.fires("unreadable_stream"):  # a fault test: an event no relay can read
                    raise ValueError("failpoint unreadable_stream")
                forward = passed.feed(chunk)
                if forward and not client_gone:
                    try:
                        await out.write(forward)
                    except (ConnectionError, RuntimeError):
                        client_gone = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The upstream broke off: bill what it reported or streamed so far (StreamUsage.final).
            if not upstream.was_cut:
                log.warning("upstream stream for %s broke off: %r", call.model.id, exc)
        except Exception:
            # An event no relay or translator could read (a shape no provider documents): the upstream
            # billed what it generated, so what was counted is billed too; the client's stream is cut.
            log.exception("stream %s of %s unreadable after %d content deltas", call.reservation_id,
                          call.model.id, usage.deltas)  # fmt: skip
            unreadable = True
        finally:
            self.streams.discard(upstream)
        if upstream.was_cut:
            log.warning("stream %s cut at shutdown after %d content deltas", call.reservation_id, usage.deltas)
        tokens = usage.final()
        if not usage.output_reported and not tokens.input:  # OpenAI reports the input only at the end
            tokens = tokens._replace(input=(request.content_length or 0) // BYTES_PER_TOKEN)
        try:
            await self.record(call, tokens)
        except UsageNotStored:
            if request.transport is not None:  # the client must not see a stream that ended well
                request.transport.close()
            await self.unrecorded(call)
            return out
        if unreadable:
            if request.transport is not None:  # as for a stream whose usage was not stored: no clean end
                request.transport.close()
            count(call, 502)
            return out
        count(call, 499 if client_gone else 200)
        if not client_gone:
            try:  # the held events and the stream's end: one write, not two
                await out.write_eof(passed.end(tokens, upstream.was_cut))
            except (ConnectionError, RuntimeError):
                pass
        return out

    # -- record or release --------------------------------------------------------------------

    async def record(self, call: Call, tokens: Tokens) -> None:
        """Store the call's usage in the log: returns once JetStream has it (UsageNotStored if it
        could not within the bound)."""
        event = usage_event(call, tokens)
        await self.recorder.store(event)
        metrics.flows.add(event.flows_micros / 1_000_000, {"model": call.model.id, "plan": call.decision.plan or ""})

    async def unrecorded(self, call: Call) -> web.Response:
        """The call ran but its usage could not be stored: its client does not get the answer."""
        await self.release(call)
        count(call, 503)
        message = "the call's usage could not be recorded (the event log refuses writes); retry shortly"
        headers = {"retry-after": str(RETRY_AFTER_S)}
        return refusal(call.api, "service_unavailable", message, headers)

    async def release(self, call: Call) -> None:
        """The call ends without usage (the upstream failed): give its reserved room back now."""
        self.inflight.ended(call.reservation_id)
        message = ReleaseReservation(account_id=call.key.account_id, reservation_id=call.reservation_id)
        try:
            subject = owner_subject(subjects.QUOTA_RELEASE, call.key.account_id, self.settings.partitions)
            await self.nc.publish(subject, encode(message), headers=tracing.nats_headers())
        except Exception:  # NATS away: quota lets it go once the heartbeats stop listing it
            pass


def usage_event(call: Call, tokens: Tokens) -> UsageRecorded:
    """The call's usage as the event the log keeps, priced at the rates admission saw."""
    decision = call.decision
    return usage_recorded(
        call.model, event_id=call.reservation_id, account_id=call.key.account_id, occurred_at=call.started,
        input_tokens=tokens.input, output_tokens=tokens.output, cached_tokens=tokens.cached, images=tokens.images,
        billing_mode=decision.billing_mode or "subscription",
        key_id=call.key.id if call.conversation_id is None else None,
        usd_per_flow=parse_fraction(decision.usd_per_flow), multiplier=parse_fraction(decision.multiplier),
        source="gateway", reservation_id=call.reservation_id, client_hash=call.client_hash,
        agent_hash=call.agent_hash, conversation_id=call.conversation_id,
    )  # fmt: skip


def count(call: Call, status: int) -> None:
    labels = {"route": call.route, "model": call.model.id, "plan": call.decision.plan or ""}
    metrics.calls.add(1, {**labels, "status": str(status)})


class _EventStream(web.StreamResponse):
    """A streamed answer whose head goes out with its first events, in one write that wakes the
    client once, not two (aiohttp's StreamResponse sends it alone at prepare; its Response waits
    like this), or on its own after HEAD_WAIT_S."""

    _send_headers_immediately = False
    _head: asyncio.TimerHandle | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if writer is not None and self._head is None:
            self._head = asyncio.get_running_loop().call_later(HEAD_WAIT_S, _send_head, writer)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._head is not None:
            self._head.cancel()
        await super().write_eof(data)


def _send_head(writer: AbstractStreamWriter) -> None:
    try:
        writer.send_headers()
    except ConnectionError:  # the client is gone: the pump finds out at its next write
        pass


class _Upstream:
    """A stream being forwarded, which a stopping gateway may cut."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.was_cut = False

    def cut(self) -> None:
        self.was_cut = True
        self.response.close()  # the pump's read ends; nothing more is read from the upstream
