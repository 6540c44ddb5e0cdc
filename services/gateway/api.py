"""The gateway's routes: the metered ones run one call's pipeline (services.gateway.pipeline) in
the protocol of their path (services.gateway.protocols); the model list and token counting."""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from libs.pricing.catalog import Model, model_json
from libs.rpc import Unavailable, ask
from libs.web import json_response
from proto.v1 import QuotaStatusRequest, rpc
from services.gateway import metrics, openapi, protocols
from services.gateway.errors import Api, refusal, request_id, upstream_failure
from services.gateway.estimate import estimate_input_tokens
from services.gateway.pipeline import CallPipeline, refused
from services.gateway.protocols import Protocol
from services.gateway.recorder import RETRY_AFTER_S

log = logging.getLogger(__name__)
_json = msgspec.json.Decoder()
METERED = frozenset(protocols.BY_PATH)
MODELS_CREATED_AT = "2025-01-01T00:00:00Z"
"""Anthropic's model list dates each model; the catalog does not, so one fixed date."""


class GatewayApi:
    """The routes: each metered one runs the call's pipeline in its client's protocol."""

    def __init__(self, pipeline: CallPipeline) -> None:
        self.pipeline = pipeline
        self.settings, self.catalog, self.nc = pipeline.settings, pipeline.catalog, pipeline.nc
        self.session, self.upstreams, self.recorder = pipeline.session, pipeline.upstreams, pipeline.recorder
        self._calls: set[asyncio.Task[Any]] = set()
        self._openapi = openapi.render().encode()

    async def drain(self, grace_s: float) -> None:
        """Let the calls in progress end within the grace; then cut the streams still running
        (each is billed for what its client was sent) and wait until their usage is stored."""
        if self._calls:
            await asyncio.wait(self._calls, timeout=grace_s)
        await self.pipeline.meter.drain(grace_s)

    @web.middleware
    async def _in_flight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts the calls a stopping gateway waits for, and refuses metered calls while their
        usage could not be stored."""
        if request.method == "POST" and request.path in METERED and not self.recorder.accepting:
            api = protocols.BY_PATH[request.path].api
            message = "usage cannot be recorded right now (the event log refuses writes); retry shortly"
            headers = {"retry-after": str(RETRY_AFTER_S)}
            return refused(request.path, refusal(api, "service_unavailable", message, headers))
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._calls.discard(task)

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._in_flight)
        for protocol in protocols.BY_NAME.values():
            app.router.add_post(protocol.path, self._call_in(protocol))
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/openapi.json", self.openapi)

    async def openapi(self, request: web.Request) -> web.Response:
        """This API's OpenAPI document (services/gateway/openapi.py): public, like the model list of ingress."""
        return web.Response(body=self._openapi, content_type="application/json")

    def _call_in(self, protocol: Protocol) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        # The pipeline's own coroutine is the route's handler: a wrapper around it would be one more
        # frame each time the call resumes (four times a call).
        return functools.partial(self.pipeline.run, client=protocol)

    # -- models -------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        api: Api = "anthropic" if "anthropic-version" in request.headers else "openai"
        key = await self.pipeline.authenticate(request, api)
        if isinstance(key, web.Response):
            return key
        if key.kind == "payg":  # billed to the balance, which may buy every model (quota admits them)
            models = list(self.catalog.models.values())
        else:
            try:
                status = await ask(self.nc, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=key.account_id),
                                   self.settings.request_timeout_s)  # fmt: skip
            except Unavailable:
                return refusal(api, "service_unavailable", "the quota service did not answer; retry")
            models = self.catalog.models_in_plan(status.plan)
        if "anthropic-version" in request.headers:
            return anthropic_model_list(models, request.query)
        data = [model_json(self.catalog, m) for m in models]
        return json_response({"object": "list", "data": data})

    # -- token counting -----------------------------------------------------------------

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's `POST /v1/messages/count_tokens`: not a model call, so neither admitted nor
        billed nor counted against RPM; the upstream counts when it speaks it, else an estimate."""
        route = "/v1/messages/count_tokens"
        key = await self.pipeline.authenticate(request, "anthropic")
        if isinstance(key, web.Response):
            return refused(route, key)
        read = await self.pipeline.read(request, "anthropic")
        if isinstance(read, web.Response):
            return refused(route, read)
        raw, body = read
        model = self.pipeline.model_of("anthropic", route, body)
        if isinstance(model, web.Response):
            return model
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            message = "messages: required, a non-empty list of messages"
            return refused(route, refusal("anthropic", "invalid_request", message, param="messages"))
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
