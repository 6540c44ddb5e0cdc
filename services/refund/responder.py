"""refund's request/reply subjects. Each request is handled in its own task: a request waits
for the sequence barrier, and one account's wait must not hold up another's."""

import asyncio
import logging

import asyncpg
import msgspec
from nats.aio.msg import Msg

from proto.v1 import (
    CancelRefund,
    ConfigurePayouts,
    GetRefund,
    ListRefunds,
    PayoutsConfigured,
    PreviewRefund,
    RefundRefused,
    RefundReply,
    RequestRefund,
    encode,
)
from services.refund.desk import RETRIED, RefundDesk, Refused
from services.refund.provider import LocalPaymentProvider

log = logging.getLogger(__name__)
Query = PreviewRefund | RequestRefund | GetRefund | ListRefunds | CancelRefund


class RefundResponder:
    def __init__(self, desk: RefundDesk, provider: LocalPaymentProvider | None) -> None:
        self._desk = desk
        self._provider = provider
        self._queries = msgspec.json.Decoder(Query)
        self._configure = msgspec.json.Decoder(ConfigurePayouts)
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_query(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        reply: msgspec.Struct
        try:
            reply = await self._handle(self._queries.decode(msg.data))
        except Refused as exc:
            reply = RefundRefused(code=exc.code, reason=exc.reason, message=exc.message)
        except msgspec.ValidationError as exc:
            reply = RefundRefused(code="invalid_request", reason="invalid_request", message=str(exc))
        except (msgspec.DecodeError, asyncpg.DataError) as exc:
            reply = RefundRefused(code="invalid_request", reason="invalid_request", message=str(exc))
        except RETRIED as exc:
            log.warning("refund request failed transiently: %r", exc)
            reply = RefundRefused(code="unavailable", reason="unavailable", message="refunds are unavailable; retry")
        except Exception:
            # Answer all the same: a request left unanswered costs its caller a timeout and a 503 "retry".
            log.exception("refund request failed")
            reply = RefundRefused(code="internal_error", reason="internal_error", message="refund request failed")
        await msg.respond(encode(reply))

    async def _handle(self, query: Query) -> RefundReply:
        if isinstance(query, PreviewRefund):
            return RefundReply(quote=await self._desk.preview(query.account_id))
        if isinstance(query, RequestRefund):
            return RefundReply(refund=await self._desk.request(query.account_id))
        if isinstance(query, GetRefund):
            return RefundReply(refund=await self._desk.get(query.account_id, query.refund_id))
        if isinstance(query, CancelRefund):
            return RefundReply(refund=await self._desk.cancel(query.account_id, query.refund_id))
        return RefundReply(refunds=await self._desk.refunds(query.account_id))

    async def on_configure(self, msg: Msg) -> None:
        command = self._configure.decode(msg.data)
        if self._provider is None:
            await msg.respond(encode(RefundRefused(
                code="not_supported", reason="not_supported", message="only the local payment provider is configurable"
            )))  # fmt: skip
            return
        self._provider.fail_payouts = command.fail_payouts
        await msg.respond(encode(PayoutsConfigured(provider=self._provider.name, fail_payouts=command.fail_payouts)))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
