"""One metered model call, as one pipeline: authenticate -> read -> choose the exchange ->
admit -> forward -> meter -> record (or release).

Each stage is a method that takes what the stages before it produced and returns either the
next step's input or the client's refusal. Nothing here knows a protocol: the client's and the
upstream's are adapters (services.gateway.protocols) that say how the upstream is addressed, how
usage is read from a reply or a stream and in whose shape errors go back; a translation between
them (services.gateway.translate) reshapes the request, the answer and the stream.

The meter and record stages (a whole reply or a stream, its usage stored before the client gets
its end, or the reservation released) are services.gateway.meter.

Where to extend: who the caller is (another kind of credential) is `authenticate`; what a
call's usage event carries (more context from the request) is `meter.Call` and
`meter.usage_event`."""

import asyncio
import logging
import os
import time
from datetime import UTC, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from nats.aio.client import Client
from opentelemetry import trace

from libs import apikeys, chatpass, tracing
from libs.clients import client_address, trusted_networks
from libs.clock import Clock
from libs.inbox import Requests
from libs.keycache import KeyCache, KeysUnavailable, UnknownKeysThrottled
from libs.pricing.catalog import Catalog, Model
from libs.pricing.money import micros_to_str
from libs.rpc import Unavailable
from libs.settings_views import GatewaySettings
from proto.v1 import (
    InflightCall,
    KeyView,
    QuotaCheck,
    QuotaDecision,
)
from services.gateway import metrics, protocols, studio
from services.gateway.body import BodyError, parse_body
from services.gateway.clients import client_marks
from services.gateway.errors import Api, refusal, request_id
from services.gateway.estimate import estimate_usd_micros
from services.gateway.inflight import InflightCalls
from services.gateway.meter import Call, Meter, count
from services.gateway.protocols import Exchange, Protocol
from services.gateway.quotachecks import QuotaChecks, QuotaUnavailable
from services.gateway.recorder import UsageRecorder
from services.gateway.translate import Refused
from services.gateway.upstreams import Upstreams

log = logging.getLogger(__name__)
FIVE_HOURS = timedelta(hours=5)
MANAGEMENT_PREFIX = apikeys.PREFIXES["management"]


class CallPipeline:
    """The gateway's metered calls, stage by stage; the model list and token counting use its
    authenticate, read and model_of stages too."""

    def __init__(
        self,
        settings: GatewaySettings,
        catalog: Catalog,
        keys: KeyCache,
        nc: Client,
        session: aiohttp.ClientSession,
        upstreams: Upstreams,
        recorder: UsageRecorder,
        clock: Clock,
        inflight: InflightCalls,
        requests: Requests,
        traced: bool,
    ) -> None:
        self.settings = settings
        self.trusted_proxies = trusted_networks(settings.trusted_proxies)
        self.catalog, self.keys, self.nc, self.session = catalog, keys, nc, session
        self.upstreams, self.recorder, self.clock = upstreams, recorder, clock
        self.inflight = inflight
        """The calls admitted and not finished: their reservations are renewed in quota by heartbeat."""
        self.checks = QuotaChecks(requests, settings.partitions, settings.request_timeout_s)
        """quota.check to the account's partition owner, coalesced under load, its replies handed
        over as they are read (libs.inbox)."""
        self.traced = traced
        """Whether this gateway has a tracer: without one no span is ever current in it, and a call
        skips the two lookups of the current span (about 3 µs)."""
        self.meter = Meter(settings, nc, recorder, inflight)

    async def run(self, request: web.Request, client: Protocol) -> web.StreamResponse:
        route, api = client.path, client.api
        # Who is asking comes first: an unauthenticated client never has its body read or parsed.
        caller = await self.caller(request, api)
        if isinstance(caller, web.Response):
            return refused(route, caller)
        key, conversation_id = caller if isinstance(caller, studio.StudioCaller) else (caller, None)
        read = await self.read(request, api)
        if isinstance(read, web.Response):
            return refused(route, read)
        raw, body = read
        model = self.model_of(api, route, body)
        if isinstance(model, web.Response):
            return model
        exchange = protocols.exchange(client, body, self.upstreams.for_vendor(model.vendor).speaks)
        if isinstance(exchange, Refused):
            return refused(route, refusal(api, "invalid_request", exchange.message, param=exchange.param))
        call = await self.admit(exchange, key, model, body, len(raw))
        if isinstance(call, web.Response):
            return call
        if conversation_id is None:
            call.client_hash, call.agent_hash = client_marks(
                self.settings.client_hash_key, request.remote, request.headers, self.trusted_proxies
            )
        else:  # the console's address is every owner's: no client marks, which the abuse signals would misread
            call.conversation_id = conversation_id
        streaming = body.get("stream") is True and client.streams
        raw, strip_usage = exchange.upstream_request(raw, body, streaming)
        response = await self.forward(request, call, raw)
        if isinstance(response, web.Response):
            return response
        return await self.meter.answer(request, call, response, streaming, strip_usage)

    # -- authenticate and read ------------------------------------------------------------

    async def caller(self, request: web.Request, api: Api) -> KeyView | studio.StudioCaller | web.Response:
        """A model call's caller: a model key, or Studio Chat's pass (accepted for model calls only)."""
        secret = _secret(request)
        if not chatpass.is_chat_pass(secret):
            return await self.authenticate(request, api)
        caller = studio.caller_of(self.settings.console_secret, secret, self.clock.now())
        if caller is None:
            metrics.refusals.add(1, {"reason": "invalid_api_key"})
            return refusal(api, "invalid_api_key", "The Studio Chat pass is forged, altered or expired.")
        try:
            suspended = await studio.suspended(self.nc, caller.key.account_id, self.settings.request_timeout_s)
        except Unavailable:
            return refusal(api, "service_unavailable", "the key service did not answer; retry")
        if suspended:
            metrics.refusals.add(1, {"reason": "account_suspended"})
            return refusal(api, "account_suspended", "This account is suspended; contact support.")
        return caller

    async def authenticate(self, request: web.Request, api: Api) -> KeyView | web.Response:
        """A model key's caller (the model list and token counting take keys only)."""
        secret = _secret(request)
        if secret.startswith(MANAGEMENT_PREFIX) and apikeys.kind_of(secret) == "management":
            # Refused by its prefix, before any lookup: a 403 that says what to use instead, and the
            # same answer for a live, revoked or made-up one (no oracle, no load on keys).
            metrics.refusals.add(1, {"reason": "insufficient_scope"})
            message = "Management keys (sk-mg-v1-) change the account and cannot call models: use a model key."
            return refusal(api, "insufficient_scope", message)
        try:
            # Behind a trusted proxy every client shares the proxy's address: the unknown-key limit
            # counts per client as the proxy names it, so one flooder cannot refuse everyone's new keys.
            client = client_address(request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies)
            key = await self.keys.authenticate(secret, client)
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

    async def read(self, request: web.Request, api: Api) -> tuple[bytes, dict[str, Any]] | web.Response:
        """The body, read within its time and size bounds and parsed as the upstream will."""
        try:
            if request.content.is_eof():  # the whole body came with the head: no wait to bound, no timer (5 µs)
                raw = await request.read()
            else:
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

    def model_of(self, api: Api, route: str, body: dict[str, Any]) -> Model | web.Response:
        """The catalog model the body names, or the (counted) refusal naming `model`."""
        model_id = body.get("model")
        if not isinstance(model_id, str) or not model_id:
            message = "model: required, a model id from GET /v1/models"
            return refused(route, refusal(api, "invalid_request", message, param="model"))
        model = self.catalog.models.get(model_id)
        if model is None:
            message = f"The model `{model_id}` does not exist."
            return refused(route, refusal(api, "unknown_model", message, param="model"))
        return model

    # -- admit ------------------------------------------------------------------------------

    async def admit(
        self, exchange: Exchange, key: KeyView, model: Model, body: dict[str, Any], size: int
    ) -> Call | web.Response:
        api, route = exchange.client.api, exchange.client.path
        started = time.perf_counter()
        model_id = label = model.id  # only catalog ids label metrics: a client's typo is no new series
        if self.traced:
            trace.get_current_span().set_attributes({"flowplan.account_id": key.account_id, "flowplan.model": model_id})
        reservation_id = f"gw_{os.urandom(16).hex()}"  # a uuid4's randomness, without its object (1.4 µs)
        check = QuotaCheck(
            account_id=key.account_id, reservation_id=reservation_id, model=model_id,
            estimated_usd_micros=estimate_usd_micros(model, body, size),
            billing_mode="payg" if key.kind == "payg" else "subscription",
        )  # fmt: skip
        try:
            decision = await self.checks.decide(check, tracing.nats_headers() if self.traced else None)
        except QuotaUnavailable:
            message = "the quota service did not answer; retry"
            unavailable = refusal(api, "service_unavailable", message, {"retry-after": "1"})
            return refused(route, unavailable, label)
        metrics.admission_seconds.record(time.perf_counter() - started)
        self.inflight.rate_seen(key.account_id, decision.rate_limit, self.clock.now())
        headers = rate_headers(decision)
        if not decision.admitted:
            reason = decision.reason or "quota_exhausted"
            if reason == "not_ready":  # quota is rebuilding its in-flight state after a start
                reason = "service_unavailable"
            metrics.refusals.add(1, {"reason": reason})
            if decision.retry_after_s is not None:
                headers["retry-after"] = str(decision.retry_after_s)
            response = refusal(api, reason, explain(decision, model_id), headers)
            return refused(route, response, label, decision.plan or "")
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
        return Call(exchange, key, model, decision, reservation_id, now, headers)

    # -- forward ----------------------------------------------------------------------------

    async def forward(self, request: web.Request, call: Call, raw: bytes) -> aiohttp.ClientResponse | web.Response:
        """The upstream's answer (its head: the body is read by the meter), or the client's 502."""
        upstream, protocol = self.upstreams.for_vendor(call.model.vendor), call.exchange.upstream
        headers = protocol.headers(upstream.key, request.headers)
        try:
            return await self.session.post(upstream.url + protocol.path, data=raw, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.meter.release(call)
            rid = request_id(request)  # the error names the upstream's address: logged, not shown
            log.warning("upstream for %s did not answer (request id %s): %r", call.model.id, rid, exc)
            message = f"The upstream provider did not answer; retry later (request id {rid})."
            failed = refusal(call.api, "upstream_unavailable", message)
            count(call, failed.status)
            return failed
        except BaseException:  # cancelled: no usage; quota lets the reservation go once no beat lists it
            self.inflight.ended(call.reservation_id)
            raise


def rate_headers(decision: QuotaDecision) -> dict[str, str]:
    limit = decision.rate_limit
    if limit is None:
        return {}
    return {
        "x-ratelimit-limit-requests": str(limit.limit),
        "x-ratelimit-remaining-requests": str(limit.remaining),
        "x-ratelimit-reset-requests": f"{limit.reset_s:.3f}s",
    }


def explain(decision: QuotaDecision, model_id: str) -> str:
    plan = decision.plan or "current"
    return {
        "model_not_in_plan": f"The {plan} plan does not include {model_id}; upgrade to call it.",
        "rate_limit_exceeded": f"Rate limit of the {plan} plan reached; retry in {decision.retry_after_s} s.",
        "quota_exhausted": f"Your {plan} plan's Flows are used up until the window resets "
        f"(in {decision.retry_after_s} s); enable Extra Usage to continue on pay-as-you-go.",
        "insufficient_balance": "Your pay-as-you-go balance cannot cover this call; top it up.",
        "unknown_account": "This key's account is not known (yet); retry in a moment.",
    }.get(decision.reason or "", decision.reason or "refused")


def refused(route: str, response: web.Response, model: str = "", plan: str = "") -> web.Response:
    """A call refused before it reached the upstream counts too: traffic and error rates include it."""
    metrics.calls.add(1, {"route": route, "model": model, "plan": plan, "status": str(response.status)})
    return response


def _secret(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return (header[7:] if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")).strip()
