"""The account's refunds: preview, request, list, get, cancel."""

from aiohttp import web

from libs.web import json_response
from proto.v1 import (
    CancelRefund,
    GetRefund,
    ListRefunds,
    PreviewRefund,
    RequestRefund,
    rpc,
)
from services.ingress import views
from services.ingress.routes.edge import Edge


class RefundRoutes(Edge):
    async def refund_preview(self, request: web.Request) -> web.Response:
        reply = await self._ask(rpc.REFUND_PREVIEW, PreviewRefund(account_id=await self._account_of(request)))
        assert reply.quote is not None
        return json_response(views.refund_preview(reply.quote))

    async def request_refund(self, request: web.Request) -> web.Response:
        reply = await self._ask(rpc.REFUND_REQUEST, RequestRefund(account_id=await self._account_of(request)))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund), 202)

    async def list_refunds(self, request: web.Request) -> web.Response:
        reply = await self._ask(rpc.REFUND_LIST, ListRefunds(account_id=await self._account_of(request)))
        return json_response({"object": "list", "data": [views.refund(r) for r in reply.refunds]})

    async def get_refund(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        refund_id = request.match_info["refund_id"]
        reply = await self._ask(rpc.REFUND_GET, GetRefund(account_id=account_id, refund_id=refund_id))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund))

    async def cancel_refund(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        refund_id = request.match_info["refund_id"]
        reply = await self._ask(rpc.REFUND_CANCEL, CancelRefund(account_id=account_id, refund_id=refund_id))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund))
