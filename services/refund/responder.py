"""refund's commands and queries (libs.rpc). Many are handled at once: a request waits for the
sequence barrier, and one account's wait must not hold up another's."""

from typing import Any

import asyncpg

from libs.fencing import Fenced
from libs.refusal import Refusal
from libs.rpc import Replier
from proto.v1 import (
    CancelRefund,
    ConfigurePayouts,
    GetRefund,
    ListRefunds,
    PayoutsConfigured,
    PreviewRefund,
    RefundReply,
    RequestRefund,
    rpc,
)
from services.refund.desk import RETRIED, RefundDesk
from services.refund.provider import LocalPaymentProvider


class RefundResponder:
    def __init__(self, desk: RefundDesk, provider: LocalPaymentProvider | None) -> None:
        self._desk = desk
        self._provider = provider

    def serve(self, runtime: Replier) -> None:
        options: dict[str, Any] = {"invalid": (asyncpg.DataError,), "transient": (*RETRIED, Fenced),
                                   "max_workers": 64,
                                   "retry_message": "refunds are unavailable; retry"}  # fmt: skip
        runtime.reply(rpc.REFUND_PREVIEW, self.preview, **options)
        runtime.reply(rpc.REFUND_REQUEST, self.request, **options)
        runtime.reply(rpc.REFUND_GET, self.get, **options)
        runtime.reply(rpc.REFUND_CANCEL, self.cancel, **options)
        runtime.reply(rpc.REFUND_LIST, self.list_refunds, **options)
        runtime.reply(rpc.REFUND_PAYOUTS, self.configure, queue=None)  # every instance

    async def preview(self, query: PreviewRefund) -> RefundReply:
        return RefundReply(quote=await self._desk.preview(query.account_id))

    async def request(self, command: RequestRefund) -> RefundReply:
        return RefundReply(refund=await self._desk.request(command.account_id))

    async def get(self, query: GetRefund) -> RefundReply:
        return RefundReply(refund=await self._desk.get(query.account_id, query.refund_id))

    async def cancel(self, command: CancelRefund) -> RefundReply:
        return RefundReply(refund=await self._desk.cancel(command.account_id, command.refund_id))

    async def list_refunds(self, query: ListRefunds) -> RefundReply:
        return RefundReply(refunds=await self._desk.refunds(query.account_id))

    async def configure(self, command: ConfigurePayouts) -> PayoutsConfigured:
        if self._provider is None:
            raise Refusal("not_supported", "only the local payment provider is configurable")
        self._provider.fail_payouts = command.fail_payouts
        return PayoutsConfigured(provider=self._provider.name, fail_payouts=command.fail_payouts)
