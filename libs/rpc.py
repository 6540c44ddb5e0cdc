"""Commands and queries over NATS request/reply, both ends, for the descriptors in proto/v1/rpc.py.

The caller: `await ask(nc, rpc.BILLING_HISTORY, BillingHistoryRequest(...))` returns the reply, raises
the responder's refusal as a `Refusal` (with the HTTP status proto maps its code to), and raises
`Unavailable` when nobody answered in time (HTTP: 503 with Retry-After). It sends the current trace
context along.

The responder: `Responders(name, tracer)` holds a faststream `NatsBroker`; `reply(rpc, handler)`
subscribes a typed handler (its argument is the decoded request Struct, its return value is the reply)
in the service's queue group. A `Refusal` raised by the handler, and a request that does not decode,
are answered with the rpc's refusal reply: never left to time out, which its caller would take for an
outage. The hot paths (quota.check, key.lookup, the event log) stay on raw nats-py: see the README.
"""

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
from faststream import BaseMiddleware
from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from nats.aio.client import Client
from opentelemetry.trace import SpanKind, Tracer

from libs import tracing
from libs.connections import subscribed
from libs.refusal import Refusal
from proto.v1 import encode
from proto.v1.rpc import Rpc

log = logging.getLogger(__name__)
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
_decoders: dict[str, "msgspec.json.Decoder[Any]"] = {}
_encoder = msgspec.json.Encoder()


class Unavailable(Exception):
    """The service did not answer (no responder, a timeout, the connection down): nothing is known,
    not even a "no"; the caller may retry."""

    retry_after_s = 1

    def __init__(self, service: str, subject: str) -> None:
        super().__init__(f"the {service} service did not answer {subject}; retry")
        self.service, self.subject = service, subject


async def ask(nc: Client, rpc: Rpc[Req, Rep], message: Req, timeout_s: float = 2.0) -> Rep:
    try:
        reply = await nc.request(rpc.subject, encode(message), timeout=timeout_s, headers=tracing.nats_headers())
    except Exception as exc:  # timeouts, no responders, a closed connection: all mean "not known"
        raise Unavailable(rpc.service, rpc.subject) from exc
    decoder = _decoders.get(rpc.subject)
    if decoder is None:
        decoder = _decoders[rpc.subject] = rpc.decoder()
    answer = decoder.decode(reply.data)
    if rpc.refusal is not None and isinstance(answer, rpc.refusal):
        raise refusal_of(rpc, answer)
    return answer  # type: ignore[no-any-return]


def refusal_of(rpc: Rpc[Any, Any], reply: Any) -> Refusal:
    """The Refusal a refusal reply carries, with the HTTP status proto gives its code (503 unknown)."""
    code: str = reply.code
    refused = Refusal(code, reply.message, getattr(reply, "field", None), reason=getattr(reply, "reason", None))
    refused.status = rpc.status.get(code, 503)
    return refused


def refusal_reply(rpc: Rpc[Any, Any], refused: Refusal) -> msgspec.Struct:
    """The rpc's own refusal reply for a Refusal: the fields it has of code, message, field, reason."""
    assert rpc.refusal is not None, f"{rpc.subject} declares no refusal reply"
    if refused.code not in rpc.status:  # its caller could not decode it: a bug here, not the client's
        log.error("%s: refusal code %r is not one of %s; answering internal_error", rpc.subject, refused.code,
                  ", ".join(rpc.status))  # fmt: skip
        refused = Refusal("internal_error", f"{rpc.subject} failed")
    fields = rpc.refusal.__struct_fields__
    values: dict[str, Any] = {"code": refused.code, "message": refused.message}
    if "field" in fields:
        values["field"] = refused.field
    if "reason" in fields:
        values["reason"] = refused.reason or refused.code
    return rpc.refusal(**values)


class _Undecodable(msgspec.Struct):
    error: str


def _decoding(rpc: Rpc[Any, Any]) -> Callable[[StreamMessage[Any]], Awaitable[Any]]:
    """The request as its Struct, or what was wrong with it (answered with a refusal, not dropped)."""
    decoder = msgspec.json.Decoder(rpc.request)

    async def decode(msg: StreamMessage[Any]) -> Any:
        try:
            return decoder.decode(msg.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _Undecodable(error=str(exc))

    return decode


def _tracing(tracer: Tracer) -> type[BaseMiddleware]:
    class Traced(BaseMiddleware):
        """A request that carries a trace context is handled in a server span of it."""

        async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
            parent = tracing.incoming(msg.headers)
            if parent is None:
                return await call_next(msg)
            subject = msg.raw_message.subject
            attributes = {**tracing.NATS, "messaging.destination.name": subject}
            with tracer.start_as_current_span(subject, parent, kind=SpanKind.SERVER, attributes=attributes):
                return await call_next(msg)

    return Traced


class Replier(Protocol):
    """What a responder registers its handlers on: the service's Runtime, or Responders in a test."""

    def reply(self, rpc: Rpc[Req, Rep], handler: Callable[[Req], Awaitable[Rep]], **options: Any) -> None: ...


class Responders:
    """A service's commands and queries, served by faststream on its own NATS connection."""

    def __init__(self, name: str, servers: str, tracer: Tracer | None = None) -> None:
        self.name = name
        middlewares = () if tracer is None else (_tracing(tracer),)
        # apply_types=False: each subscriber decodes its request Struct with msgspec itself (below),
        # so a request that does not decode is answered with a refusal instead of dropped.
        self.broker = NatsBroker(
            servers, name=f"{name}-rpc", logger=log, log_level=logging.DEBUG, apply_types=False,
            middlewares=middlewares,  # log_level: each message's received/processed lines, not at INFO
        )  # fmt: skip
        self._started = False
        self._unstarted: list[Any] = []
        """Subscribers registered since the broker started (a projection whose instance got its lease
        later registers its replay and dead-letter commands then): start() starts them."""

    def reply(
        self,
        rpc: Rpc[Req, Rep],
        handler: Callable[[Req], Awaitable[Rep]],
        *,
        queue: str | None = "",
        invalid: tuple[type[Exception], ...] = (),
        transient: tuple[type[BaseException], ...] = (),
        retry_message: str = "",
        undecodable: Callable[[str], Rep] | None = None,
        **options: Any,
    ) -> None:
        """Answer `rpc` with `handler` in the service's queue group (queue=None: every instance answers).
        Exceptions of `invalid` (the database refusing a value) are answered as invalid_request, those
        of `transient` as unavailable (nothing was done: retry). A request that does not decode is
        answered with the refusal reply, or with `undecodable(error)` for an rpc whose reply says
        it failed itself. `options` go to faststream's subscriber (max_workers: requests handled at
        once, for handlers that wait)."""

        async def answer(request: Req | _Undecodable) -> bytes:
            """The reply, encoded here (msgspec, with its tag): faststream sends bytes as they are."""
            return _encoder.encode(await reply_to(request))

        async def reply_to(request: Req | _Undecodable) -> Rep | msgspec.Struct:
            if isinstance(request, _Undecodable):
                if undecodable is not None:
                    return undecodable(request.error)
                if rpc.refusal is None:
                    raise Refusal("invalid_request", request.error)
                return refusal_reply(rpc, Refusal("invalid_request", request.error))
            try:
                return await handler(request)
            except Refusal as refused:
                if rpc.refusal is None:
                    raise
                return refusal_reply(rpc, refused)
            except invalid as exc:
                return refusal_reply(rpc, Refusal("invalid_request", str(exc)))
            except transient as exc:
                log.warning("%s failed transiently: %r", rpc.subject, exc)
                message = retry_message or f"the {rpc.service} service did not do it; retry"
                return refusal_reply(rpc, Refusal("unavailable", message))
            except Exception:
                if rpc.refusal is None:
                    raise
                log.exception("%s failed", rpc.subject)
                return refusal_reply(rpc, Refusal("internal_error", f"{rpc.subject} failed"))

        answer.__name__ = answer.__qualname__ = re.sub(r"\W", "_", rpc.subject)
        answer.__doc__ = rpc.summary
        subscriber = self.broker.subscriber(
            rpc.subject, queue=self.name if queue == "" else (queue or ""), title=rpc.subject,
            description=rpc.summary, **options,
        )  # fmt: skip
        subscriber(answer, decoder=_decoding(rpc))
        self._unstarted.append(subscriber)

    async def start(self) -> None:
        """Start answering everything registered so far: the broker the first time, afterwards the
        subscribers registered since."""
        if not self._started:
            await self.broker.start()
            self._started = True
        else:
            for subscriber in self._unstarted:
                await subscriber.start()
        self._unstarted.clear()
        # Subscribing only queues SUB: whatever is asked after start() must reach every instance (a
        # request right after start got "no responders", a scatter-gather missed an instance).
        await subscribed(await self.broker.connect())

    async def stop(self) -> None:
        await self.broker.stop()
