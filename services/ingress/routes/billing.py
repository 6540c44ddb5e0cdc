"""Billing as the account sees it (history, cost analysis, checkout) and the provider's payment webhook."""

from datetime import timedelta

import msgspec
from aiohttp import web

from libs import paymentwebhooks
from libs.pricing.money import micros_to_str
from libs.web import ApiError, decode_body, json_response
from proto.v1 import (
    BillingHistoryRequest,
    CostsRequest,
    RecordPayment,
    rpc,
)
from services.ingress import checkout, views
from services.ingress.routes.edge import Edge, int_query, time_query


class BillingRoutes(Edge):
    async def billing_history(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        limit = int_query(request, "limit", 100, 1, 1000)
        reply = await self._ask(rpc.BILLING_HISTORY, BillingHistoryRequest(account_id=account_id, limit=limit))
        entries = [views.billing_entry(e) for e in reply.entries]
        return json_response({"object": "list", "data": entries, "balance_usd": micros_to_str(reply.balance_micros)})

    async def costs(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        group_by = request.query.get("group_by", "model")
        if group_by not in ("model", "day", "hour"):
            raise ApiError(400, "invalid_request", "group_by: must be model, day or hour", "group_by")
        until = time_query(request, "to", self.clock.now())
        since = time_query(request, "from", until - timedelta(days=30))
        if since > until:
            raise ApiError(400, "invalid_request", "from: must not be after to", "from")
        reply = await self._ask(
            rpc.BILLING_COSTS, CostsRequest(account_id=account_id, group_by=group_by, since=since, until=until)
        )
        return json_response(views.costs(group_by, since, until, reply.lines))

    async def start_checkout(self, request: web.Request) -> web.Response:
        """A checkout on the payment provider's page for a plan's month or a top-up; the owner comes
        back to the console's subscription page."""
        account_id = await self._account_of(request)
        item = checkout.item(self.catalog, decode_body(await request.read(), checkout.CheckoutIn))
        back = f"{self.console_url}/subscription"
        session = await self.checkouts.create(account_id, item, f"{back}?checkout=paid", f"{back}?checkout=cancelled")
        return json_response({"checkout_id": session.id, "checkout_url": session.url, **msgspec.to_builtins(item)}, 201)

    async def payment_webhook(self, request: web.Request) -> web.Response:
        """The provider's signed word that a checkout was paid. 2xx only once billing recorded it;
        a bad or stale signature records nothing; a delivery sent again is recorded once (billing
        keeps one payment or top-up per provider payment id)."""
        body = await request.read()
        try:
            header = request.headers.get(paymentwebhooks.HEADER, "")
            paymentwebhooks.verify(self.settings.payment_webhook_secret, body, header, self.clock.now().timestamp())
        except paymentwebhooks.BadSignature as exc:
            raise ApiError(400, "invalid_signature", f"webhook signature: {exc}", paymentwebhooks.HEADER) from exc
        event = decode_body(body, checkout.ProviderEvent)
        if event.data.account_id not in self.directory.accounts:
            raise ApiError(400, "invalid_request", "data.account_id: no such account", "data.account_id")
        command = checkout.command(event)
        if isinstance(command, RecordPayment):
            accepted = await self._ask(rpc.BILLING_RECORD_PAYMENT, command)
            await self._until_quota_applied(command.account_id, accepted.seq)
            duplicate = accepted.duplicate
        else:
            topped = await self._ask(rpc.BILLING_TOP_UP, command)
            await self._until_quota_applied(command.account_id, topped.seq)
            duplicate = topped.duplicate
        return json_response({"received": event.id, "duplicate": duplicate})
