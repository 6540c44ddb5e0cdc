"""The gateway's routes: one admission path, one forwarding path, three protocols."""

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from nats.aio.client import Client
from opentelemetry import trace

from libs import apikeys, chatpass, tracing
from libs.clock import Clock
from libs.keycache import KeyCache, KeysUnavailable, UnknownKeysThrottled
from libs.pricing.catalog import Catalog, Model, model_json
from libs.pricing.money import micros_to_str, parse_fraction
from libs.pricing.usage import usage_recorded
from libs.rpc import Unavailable, ask
from libs.settings import Settings
from libs.web import json_response
from proto.v1 import (
    InflightCall,
    KeyView,
    QuotaCheck,
    QuotaDecision,
    QuotaStatusRequest,
    ReleaseReservation,
    encode,
    rpc,
    subjects,
)
from services.gateway import metrics, studio, translate
from services.gateway.body import BodyError, parse_body
from services.gateway.clients import client_marks, trusted_networks
from services.gateway.errors import Api, refusal, request_id, upstream_failure
from services.gateway.estimate import BYTES_PER_TOKEN, estimate_input_tokens, estimate_usd_micros
from services.gateway.inflight import InflightCalls
from services.gateway.recorder import RETRY_AFTER_S, UsageNotStored, UsageRecorder
from services.gateway.studio import StudioCaller
from services.gateway.translate import Translation
from services.gateway.upstreams import Upstreams
from services.gateway.usage import SseSplitter, StreamUsage, Tokens, from_anthropic, from_openai

log = logging.getLogger(__name__)
_decision = msgspec.json.Decoder(QuotaDecision)
_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()
FIVE_HOURS = timedelta(hours=5)
PASSED_HEADERS = {"content-type"}
METERED = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/images/generations", "/v1/responses"})
ANTHROPIC_FINAL = frozenset({"message_delta", "message_stop"})
MODELS_CREATED_AT = "2025-01-01T00:00:00Z"
"""Anthropic's model list dates each model; the catalog does not, so one fixed date."""


class Admitted(msgspec.Struct):
    api: Api
    route: str
    key: KeyView
    model: Model
    decision: QuotaDecision
    reservation_id: str
    started: datetime
    headers: dict[str, str]
    client_hash: str | None = None
    agent_hash: str | None = None
    conversation_id: str | None = None
    """Set for Studio Chat's calls (services/gateway/studio.py): their usage names it, not a key."""


class GatewayApi:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        keys: KeyCache,
        nc: Client,
        session: aiohttp.ClientSession,
        upstreams: Upstreams,
        recorder: UsageRecorder,
        clock: Clock,
        inflight: InflightCalls | None = None,
    ) -> None:
        self.settings = settings
        self.trusted_proxies = trusted_networks(settings.trusted_proxies)
        self.catalog = catalog
        self.keys = keys
        self.nc = nc
        self.session = session
        self.upstreams = upstreams
        self.recorder = recorder
        self.clock = clock
        self.inflight = inflight if inflight is not None else InflightCalls(clock)
        """The calls admitted and not finished: their reservations are renewed in quota by heartbeat."""
        self._pumps: set[asyncio.Task[web.StreamResponse]] = set()
        self._streams: set[_Upstream] = set()
        self._calls: set[asyncio.Task[Any]] = set()

    async def drain(self, grace_s: float) -> None:
        """Let the calls in progress end within the grace; then cut the streams still running
        (each is billed for what its client was sent) and wait until their usage is stored."""
        if self._calls:
            await asyncio.wait(self._calls, timeout=grace_s)
        if self._streams:
            log.warning("shutdown grace of %.0f s over: cutting %d streams", grace_s, len(self._streams))
            for stream in list(self._streams):
                stream.cut()
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=self.settings.usage_store_timeout_s + 10)

    @web.middleware
    async def _in_flight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts the calls a stopping gateway waits for, and refuses metered calls while their
        usage could not be stored."""
        if request.method == "POST" and request.path in METERED and not self.recorder.accepting:
            api: Api = "anthropic" if request.path == "/v1/messages" else "openai"
            message = "usage cannot be recorded right now (the event log refuses writes); retry shortly"
            headers = {"retry-after": str(RETRY_AFTER_S)}
            return self._refused(request.path, "", "", refusal(api, "service_unavailable", message, headers))
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._calls.discard(task)

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._in_flight)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_post("/v1/responses", self.create_response)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "openai", "/v1/chat/completions")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "anthropic", "/v1/messages")

    async def images(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, "openai", "/v1/images/generations")

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        """The Responses API, translated to chat completions for the upstream (translate.responses)."""
        return await self._call(request, "openai", "/v1/responses")

    # -- authentication and admission ---------------------------------------------------

    async def _caller(self, request: web.Request, api: Api) -> KeyView | StudioCaller | web.Response:
        """A model call's caller: a model key, or Studio Chat's pass (accepted for model calls only)."""
        secret = _secret(request)
        if not chatpass.is_chat_pass(secret):
            return await self._authenticate(request, api)
        caller = studio.caller_of(self.settings.console_secret, secret, self.clock.now())
        if caller is None:
            metrics.refusals.add(1, {"reason": "invalid_api_key"})
            return refusal(api, "invalid_api_key", "The Studio Chat pass is forged, altered or expired.")
        try:
            suspended = await studio.suspended(self.nc, caller.key.account_id, self.settings.request_timeout_s)
        except Exception:
            return refusal(api, "service_unavailable", "the key service did not answer; retry")
        if suspended:
            metrics.refusals.add(1, {"reason": "account_suspended"})
            return refusal(api, "account_suspended", "This account is suspended; contact support.")
        return caller

    async def _authenticate(self, request: web.Request, api: Api) -> KeyView | web.Response:
        secret = _secret(request)
        if apikeys.kind_of(secret.strip()) == "management":
            # Refused by its prefix, before any lookup: a 403 that says what to use instead, and the
            # same answer for a live, revoked or made-up one (no oracle, no load on keys).
            metrics.refusals.add(1, {"reason": "insufficient_scope"})
            message = "Management keys (sk-mg-v1-) change the account and cannot call models: use a model key."
            return refusal(api, "insufficient_scope", message)
        try:
            key = await self.keys.authenticate(secret.strip(), request.remote)
        except KeysUnavailable:
            return refusal(api, "service_unavailable", "the key service did not answer; retry")
        except UnknownKeysThrottled as exc:
            metrics.refusals.add(1, {"reason": exc.code})
            return refusal(api, exc.code, exc.message, {"retry-after": str(exc.retry_after_s)})
        if key is None:
            metrics.refusals.add(1, {"reason": "invalid_api_key"})
            return refusal(api, "invalid_api_key", "Incorrect API key provided: it is malformed, unknown or revoked.")
        if key.account_suspended:
            metrics.refusals.add(1, {"reason": "account_suspended"})
            return refusal(api, "account_suspended", "This account is suspended; contact support.")
        return key

    def _model_of(self, api: Api, route: str, body: dict[str, Any]) -> Model | web.Response:
        """The catalog model the body names, or the (counted) refusal naming `model`."""
        model_id = body.get("model")
        if not isinstance(model_id, str) or not model_id:
            message = "model: required, a model id from GET /v1/models"
            return self._refused(route, "", "", refusal(api, "invalid_request", message, param="model"))
        model = self.catalog.models.get(model_id)
        if model is None:
            message = f"The model `{model_id}` does not exist."
            return self._refused(route, "", "", refusal(api, "unknown_model", message, param="model"))
        return model

    async def _admit(
        self, api: Api, route: str, key: KeyView, model: Model, body: dict[str, Any], size: int
    ) -> Admitted | web.Response:
        started = time.perf_counter()
        model_id = label = model.id  # only catalog ids label metrics: a client's typo is no new series
        trace.get_current_span().set_attributes({"flowplan.account_id": key.account_id, "flowplan.model": model_id})
        reservation_id = f"gw_{uuid.uuid4().hex}"
        check = QuotaCheck(
            account_id=key.account_id, reservation_id=reservation_id, model=model_id,
            estimated_usd_micros=estimate_usd_micros(model, body, size),
            billing_mode="payg" if key.kind == "payg" else "subscription",
        )  # fmt: skip
        try:
            reply = await self.nc.request(
                subjects.QUOTA_CHECK, encode(check), timeout=self.settings.request_timeout_s,
                headers=tracing.nats_headers(),
            )  # fmt: skip
        except Exception:
            message = "the quota service did not answer; retry"
            unavailable = refusal(api, "service_unavailable", message, {"retry-after": "1"})
            return self._refused(route, label, "", unavailable)
        decision = _decision.decode(reply.data)
        metrics.admission_seconds.record(time.perf_counter() - started)
        self.inflight.rate_seen(key.account_id, decision.rate_limit, self.clock.now())
        headers = self._rate_headers(decision)
        if not decision.admitted:
            reason = decision.reason or "quota_exhausted"
            if reason == "not_ready":  # quota is rebuilding its in-flight state after a start
                reason = "service_unavailable"
            metrics.refusals.add(1, {"reason": reason})
            if decision.retry_after_s is not None:
                headers["retry-after"] = str(decision.retry_after_s)
            response = refusal(api, reason, self._explain(decision, model_id), headers)
            return self._refused(route, label, decision.plan or "", response)
        now = self.clock.now()
        headers["x-flowplan-billing-mode"] = decision.billing_mode or "subscription"
        headers["x-flowplan-flows-remaining"] = micros_to_str(decision.flows_remaining_micros)
        resets = decision.window_resets_at or now + FIVE_HOURS
        headers["x-flowplan-window-resets-at"] = resets.astimezone(UTC).isoformat().replace("+00:00", "Z")
        self.inflight.admitted(
            InflightCall(
                account_id=key.account_id, reservation_id=reservation_id,
                billing_mode=decision.billing_mode or "subscription",
                estimated_usd_micros=check.estimated_usd_micros, admitted_at=now,
            )
        )  # fmt: skip
        return Admitted(api, route, key, model, decision, reservation_id, now, headers)

    @staticmethod
    def _rate_headers(decision: QuotaDecision) -> dict[str, str]:
        limit = decision.rate_limit
        if limit is None:
            return {}
        return {
            "x-ratelimit-limit-requests": str(limit.limit),
            "x-ratelimit-remaining-requests": str(limit.remaining),
            "x-ratelimit-reset-requests": f"{limit.reset_s:.3f}s",
        }

    @staticmethod
    def _explain(decision: QuotaDecision, model_id: str) -> str:
        plan = decision.plan or "current"
        return {
            "model_not_in_plan": f"The {plan} plan does not include {model_id}; upgrade to call it.",
            "rate_limit_exceeded": f"Rate limit of the {plan} plan reached; retry in {decision.retry_after_s} s.",
            "quota_exhausted": f"Your {plan} plan's Flows are used up until the window resets "
            f"(in {decision.retry_after_s} s); enable Extra Usage to continue on pay-as-you-go.",
            "insufficient_balance": "Your pay-as-you-go balance cannot cover this call; top it up.",
            "unknown_account": "This key's account is not known (yet); retry in a moment.",
        }.get(decision.reason or "", decision.reason or "refused")

    # -- forwarding ---------------------------------------------------------------------

    async def _read(self, request: web.Request, api: Api) -> tuple[bytes, dict[str, Any]] | web.Response:
        """The body, read within its time and size bounds and parsed as the upstream will."""
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            message = f"the request body did not arrive within {self.settings.body_timeout_s:g} s"
            response = refusal(api, "request_timeout", message)
            response.force_close()  # a client trickling its body keeps no connection
            return response
        except web.HTTPRequestEntityTooLarge:
            message = f"the request body is over {self.settings.max_body_bytes} bytes"
            return refusal(api, "request_too_large", message)
        body = parse_body(raw, self.settings.max_json_depth)
        if isinstance(body, BodyError):
            return refusal(api, "invalid_request", body.message, param=body.param)
        return raw, body

    async def _call(self, request: web.Request, api: Api, path: str) -> web.StreamResponse:
        # Who is asking comes first: an unauthenticated client never has its body read or parsed.
        caller = await self._caller(request, api)
        if isinstance(caller, web.Response):
            return self._refused(path, "", "", caller)
        key, conversation_id = caller if isinstance(caller, StudioCaller) else (caller, None)
        read = await self._read(request, api)
        if isinstance(read, web.Response):
            return self._refused(path, "", "", read)
        raw, body = read
        # When the model's upstream does not speak the client's protocol (or it is the Responses
        # API), the call is translated: decided before admission, so a call that cannot be is a 400.
        model = self._model_of(api, path, body)
        if isinstance(model, web.Response):
            return model
        translation = translate.plan(path, body, self.upstreams.for_vendor(model.vendor).speaks)
        if isinstance(translation, translate.Refused):
            message, param = translation
            return self._refused(path, "", "", refusal(api, "invalid_request", message, param=param))
        admitted = await self._admit(api, path, key, model, body, len(raw))
        if isinstance(admitted, web.Response):
            return admitted
        if conversation_id is None:
            admitted.client_hash, admitted.agent_hash = client_marks(
                self.settings.client_hash_key, request.remote, request.headers, self.trusted_proxies
            )
        else:  # the console's address is every owner's: no client marks, which the abuse signals would misread
            admitted.conversation_id = conversation_id
        upstream_path, upstream_api = path, api
        if translation is not None:
            raw = _encode.encode(translation.body)
            upstream_path, upstream_api = translation.upstream_path, translation.upstream_api
        streaming = body.get("stream") is True and path != "/v1/images/generations"
        strip_usage = False
        if streaming and api == "openai" and translation is None:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                raw, strip_usage = _encode.encode(body), True
        upstream = self.upstreams.for_vendor(admitted.model.vendor)
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if upstream_api == "anthropic":
            headers["x-api-key"] = upstream.key
            headers["anthropic-version"] = request.headers.get("anthropic-version", "2023-06-01")
            if beta := request.headers.get("anthropic-beta"):
                headers["anthropic-beta"] = beta
        else:
            headers["authorization"] = f"Bearer {upstream.key}"
        try:
            response = await self.session.post(upstream.url + upstream_path, data=raw, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._release(admitted)
            rid = request_id(request)  # the error names the upstream's address: logged, not shown
            log.warning("upstream for %s did not answer (request id %s): %r", admitted.model.id, rid, exc)
            message = f"The upstream provider did not answer; retry later (request id {rid})."
            failed = refusal(api, "upstream_unavailable", message)
            self._count(admitted, failed.status)
            return failed
        except BaseException:  # cancelled: no usage; quota lets the reservation go once no beat lists it
            self.inflight.ended(admitted.reservation_id)
            raise
        if streaming and response.status == 200:
            # The stream is read to its end and billed in a task of its own, so that nothing
            # that cancels the request's handler (a server stopping, a framework reacting to a
            # hang-up) can cut the metering short.
            pump = asyncio.create_task(self._stream(request, admitted, response, strip_usage, translation))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)
            pump.add_done_callback(lambda _: self.inflight.ended(admitted.reservation_id))
            return await asyncio.shield(pump)
        try:
            return await self._whole(request, admitted, response, upstream_path, translation)
        finally:
            response.release()
            self.inflight.ended(admitted.reservation_id)

    async def _whole(
        self,
        request: web.Request,
        admitted: Admitted,
        response: aiohttp.ClientResponse,
        path: str,
        translation: Translation | None = None,
    ) -> web.Response:
        try:
            payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._release(admitted)
            rid = request_id(request)
            log.warning("upstream for %s broke off (request id %s): %r", admitted.model.id, rid, exc)
            message = f"The upstream provider broke off; retry later (request id {rid})."
            failed = refusal(admitted.api, "upstream_unavailable", message)
            self._count(admitted, failed.status)
            return failed
        if response.status != 200:
            await self._release(admitted)
            rid = request_id(request)
            log.warning(
                "upstream answered %d for %s (request id %s, account %s): headers %s body %r",
                response.status, admitted.model.id, rid, admitted.key.account_id,
                dict(response.headers), payload[:4096],
            )  # fmt: skip
            failed = upstream_failure(admitted.api, response.status, response.headers, rid)
            failed.headers.update(admitted.headers)
            self._count(admitted, failed.status)
            return failed
        # Only what describes the body goes on: an upstream's ids, org and rate-limit headers stay here.
        headers = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
        headers.update(admitted.headers)
        try:
            data = _json.decode(payload)
        except msgspec.DecodeError:
            data = {}
        usage = data.get("usage") if isinstance(data, dict) else None
        if (translation.upstream_api if translation else admitted.api) == "anthropic":
            tokens = from_anthropic(usage)
        else:
            tokens = from_openai(usage)
            if path == "/v1/images/generations":
                images = data.get("data") if isinstance(data, dict) else None
                tokens = tokens._replace(output=0, images=len(images) if isinstance(images, list) else 0)
        try:
            await self._record(admitted, tokens)
        except UsageNotStored:
            return await self._unrecorded(admitted)
        self._count(admitted, 200)
        headers["x-flowplan-request-id"] = admitted.reservation_id
        if translation is not None and isinstance(data, dict):
            answer = translation.answer(data, _call_id(admitted), int(admitted.started.timestamp()), tokens)
            payload = _encode.encode(answer)
        return web.Response(body=payload, status=200, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        admitted: Admitted,
        response: aiohttp.ClientResponse,
        strip_usage: bool,
        translation: Translation | None = None,
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=200)
        out.headers["content-type"] = response.headers.get("content-type", "text/event-stream")
        out.headers["cache-control"] = "no-cache"
        out.headers.update(admitted.headers)
        out.headers["x-flowplan-request-id"] = admitted.reservation_id
        try:
            translator = None
            if translation is not None:
                out.headers["content-type"] = "text/event-stream"
                translator = translation.stream(_call_id(admitted), int(admitted.started.timestamp()))
            upstream_api = translation.upstream_api if translation else admitted.api
            return await self._pump(request, admitted, response, strip_usage, out, translator, upstream_api)
        finally:
            response.release()

    async def _pump(
        self,
        request: web.Request,
        admitted: Admitted,
        response: aiohttp.ClientResponse,
        strip_usage: bool,
        out: web.StreamResponse,
        translator: translate.StreamTranslator | None = None,
        upstream_api: Api | None = None,
    ) -> web.StreamResponse:
        usage = StreamUsage(upstream_api or admitted.api)
        splitter = SseSplitter()
        upstream = _Upstream(response)
        held = bytearray()  # the stream's final events: the client gets them once the usage is stored
        client_gone = False
        try:
            await out.prepare(request)
        except (ConnectionError, RuntimeError):
            client_gone = True
        # Every other event goes on to the client the moment it is whole; the usage is read on the
        # side. A client that hangs up does not stop the reading: the upstream generates (and bills)
        # on. A stopping gateway that cuts the stream stops it: the client is billed for what it got.
        self._streams.add(upstream)
        try:
            async for chunk in response.content.iter_any():
                forward = bytearray()
                for event in splitter.feed(chunk):
                    usage.observe(event.data)
                    if translator is not None:  # its final events come from translator.finish, below
                        forward += translator.feed(event.data)
                        continue
                    if (
                        strip_usage
                        and isinstance(event.data, dict)
                        and event.data.get("usage")
                        and not event.data.get("choices")
                    ):
                        continue
                    if held or _is_final(admitted.api, event.data, event.raw):
                        held += event.raw
                    else:
                        forward += event.raw
                if forward and not client_gone:
                    try:
                        await out.write(bytes(forward))
                    except (ConnectionError, RuntimeError):
                        client_gone = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The upstream broke off: bill what it reported or streamed so far (StreamUsage.final).
            if not upstream.was_cut:
                log.warning("upstream stream for %s broke off: %r", admitted.model.id, exc)
        finally:
            self._streams.discard(upstream)
        if upstream.was_cut:
            log.warning("stream %s cut at shutdown after %d content deltas", admitted.reservation_id, usage.deltas)
        elif translator is None:
            held += splitter.rest()
        tokens = usage.final()
        if not usage.output_reported and not tokens.input:  # OpenAI reports the input only at the end
            tokens = tokens._replace(input=(request.content_length or 0) // BYTES_PER_TOKEN)
        try:
            await self._record(admitted, tokens)
        except UsageNotStored:
            if request.transport is not None:  # the client must not see a stream that ended well
                request.transport.close()
            await self._unrecorded(admitted)
            return out
        self._count(admitted, 499 if client_gone else 200)
        if translator is not None:  # what it ends with carries the usage just stored
            held = bytearray(translator.finish(tokens))
        if not client_gone:
            try:
                if held:
                    await out.write(bytes(held))
                await out.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        return out

    # -- usage --------------------------------------------------------------------------

    async def _record(self, admitted: Admitted, tokens: Tokens) -> None:
        """Store the call's usage in the log: returns once JetStream has it (UsageNotStored if it
        could not within the bound)."""
        decision = admitted.decision
        event = usage_recorded(
            admitted.model, event_id=admitted.reservation_id, account_id=admitted.key.account_id,
            occurred_at=admitted.started, input_tokens=tokens.input, output_tokens=tokens.output,
            cached_tokens=tokens.cached, images=tokens.images, billing_mode=decision.billing_mode or "subscription",
            key_id=admitted.key.id if admitted.conversation_id is None else None,
            usd_per_flow=parse_fraction(decision.usd_per_flow), multiplier=parse_fraction(decision.multiplier),
            source="gateway", reservation_id=admitted.reservation_id, client_hash=admitted.client_hash,
            agent_hash=admitted.agent_hash, conversation_id=admitted.conversation_id,
        )  # fmt: skip
        await self.recorder.store(event)
        metrics.flows.add(event.flows_micros / 1_000_000, {"model": admitted.model.id, "plan": decision.plan or ""})

    async def _unrecorded(self, admitted: Admitted) -> web.Response:
        """The call ran but its usage could not be stored: its client does not get the answer."""
        await self._release(admitted)
        self._count(admitted, 503)
        message = "the call's usage could not be recorded (the event log refuses writes); retry shortly"
        headers = {"retry-after": str(RETRY_AFTER_S)}
        return refusal(admitted.api, "service_unavailable", message, headers)

    async def _release(self, admitted: Admitted) -> None:
        """The call ends without usage (the upstream failed): give its reserved room back now."""
        self.inflight.ended(admitted.reservation_id)
        message = ReleaseReservation(account_id=admitted.key.account_id, reservation_id=admitted.reservation_id)
        try:
            await self.nc.publish(subjects.QUOTA_RELEASE, encode(message), headers=tracing.nats_headers())
        except Exception:  # NATS away: quota lets it go once the heartbeats stop listing it
            pass

    @staticmethod
    def _count(admitted: Admitted, status: int) -> None:
        labels = {"route": admitted.route, "model": admitted.model.id, "plan": admitted.decision.plan or ""}
        metrics.calls.add(1, {**labels, "status": str(status)})

    @staticmethod
    def _refused(route: str, model: str, plan: str, response: web.Response) -> web.Response:
        """A call refused before it reached the upstream counts too: traffic and error rates include it."""
        metrics.calls.add(1, {"route": route, "model": model, "plan": plan, "status": str(response.status)})
        return response

    # -- models -------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        api: Api = "anthropic" if "anthropic-version" in request.headers else "openai"
        key = await self._authenticate(request, api)
        if isinstance(key, web.Response):
            return key
        try:
            status = await ask(self.nc, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=key.account_id),
                               self.settings.request_timeout_s)  # fmt: skip
        except Unavailable:
            return refusal(api, "service_unavailable", "the quota service did not answer; retry")
        plan = status.plan
        models = self.catalog.models_in_plan(plan)
        if "anthropic-version" in request.headers:
            return anthropic_model_list(models, request.query)
        data = [model_json(self.catalog, m) for m in models]
        return json_response({"object": "list", "data": data})

    # -- token counting -----------------------------------------------------------------

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's `POST /v1/messages/count_tokens`: not a model call, so neither admitted nor
        billed nor counted against RPM; the upstream counts when it speaks it, else an estimate."""
        route = "/v1/messages/count_tokens"
        key = await self._authenticate(request, "anthropic")
        if isinstance(key, web.Response):
            return self._refused(route, "", "", key)
        read = await self._read(request, "anthropic")
        if isinstance(read, web.Response):
            return self._refused(route, "", "", read)
        raw, body = read
        model = self._model_of("anthropic", route, body)
        if isinstance(model, web.Response):
            return model
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            message = "messages: required, a non-empty list of messages"
            return self._refused(route, "", "", refusal("anthropic", "invalid_request", message, param="messages"))
        counted = await self._count_upstream(request, model, raw)
        if isinstance(counted, web.Response):
            return counted
        source = "upstream" if counted is not None else "estimate"
        tokens = counted if counted is not None else estimate_input_tokens(body)
        metrics.calls.add(1, {"route": route, "model": model.id, "plan": "", "status": "200"})
        return json_response({"input_tokens": tokens}, headers={"x-flowplan-token-count": source})

    async def _count_upstream(self, request: web.Request, model: Model, raw: bytes) -> int | web.Response | None:
        """The upstream's count; None when it does not count tokens (not an Anthropic-protocol
        model, an upstream that does not speak messages, no such route there, or no answer), an
        error response when it refused the request."""
        upstream = self.upstreams.for_vendor(model.vendor)
        if model.api != "anthropic" or "messages" not in upstream.speaks:
            return None
        headers = {
            "content-type": "application/json", "accept-encoding": "identity", "x-api-key": upstream.key,
            "anthropic-version": request.headers.get("anthropic-version", "2023-06-01"),
        }  # fmt: skip
        if beta := request.headers.get("anthropic-beta"):
            headers["anthropic-beta"] = beta
        try:
            async with self.session.post(
                upstream.url + "/v1/messages/count_tokens", data=raw, headers=headers
            ) as response:
                payload = await response.read()
                if response.status in (404, 405, 501):
                    return None
                if response.status != 200:
                    rid = request_id(request)
                    log.warning("upstream count_tokens answered %d (request id %s)", response.status, rid)
                    return upstream_failure("anthropic", response.status, response.headers, rid)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("upstream count_tokens for %s did not answer: %r", model.id, exc)
            return None
        try:
            counted = _json.decode(payload).get("input_tokens")
        except (msgspec.DecodeError, AttributeError):
            return None
        return counted if isinstance(counted, int) and counted >= 0 else None


def anthropic_model_list(models: list[Model], query: Any) -> web.Response:
    """GET /v1/models as Anthropic lists models: `data` of {type, id, display_name, created_at},
    paged by `limit` and `after_id` / `before_id` with `has_more`, `first_id`, `last_id`."""
    items = [{"type": "model", "id": m.id, "display_name": m.name, "created_at": MODELS_CREATED_AT} for m in models]
    ids = [m.id for m in models]
    if (after := query.get("after_id")) in ids:
        items = items[ids.index(after) + 1 :]
    elif (before := query.get("before_id")) in ids:
        items = items[: ids.index(before)]
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        return refusal("anthropic", "invalid_request", "limit: a whole number from 1 to 1000", param="limit")
    page = items[: int(raw_limit)]
    return json_response({
        "data": page, "has_more": len(items) > len(page),
        "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None,
    })  # fmt: skip


class _Upstream:
    """A stream being forwarded, which a stopping gateway may cut."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.was_cut = False

    def cut(self) -> None:
        self.was_cut = True
        self.response.close()  # the pump's read ends; nothing more is read from the upstream


def _secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return (header[7:] if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")).strip()


def _call_id(admitted: Admitted) -> str:
    """What a translated answer's id is made of: the call's own, as its usage event names it."""
    return admitted.reservation_id.removeprefix("gw_")


def _is_final(api: Api, data: Any, raw: bytes) -> bool:
    """An event that ends the stream (its stop reason, usage or terminator): held back until the
    call's usage is stored, so that a client never sees a finished stream that is not billed."""
    if api == "anthropic":
        return isinstance(data, dict) and data.get("type") in ANTHROPIC_FINAL
    if not isinstance(data, dict):
        return data is None and b"[DONE]" in raw
    if data.get("type") in ("response.completed", "response.incomplete", "response.failed"):
        return True
    choices = data.get("choices")
    if not choices:
        return bool(data.get("usage"))
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
