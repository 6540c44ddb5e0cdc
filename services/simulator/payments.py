"""The local payment provider (Stripe-shaped), so that a purchase runs with no provider account:
`POST /provider/v1/checkout/sessions` makes a hosted checkout; its page shows the item and the
amount with "Pay" and "Cancel"; "Pay" sends the signed `checkout.completed` webhook and, once
flowplan answered 2xx, sends the buyer back to the success URL. Sessions live in memory."""

import html
import secrets
import time
from datetime import UTC, datetime
from typing import Literal

import aiohttp
import msgspec
from aiohttp import web

from libs import paymentwebhooks
from services.simulator.settings import SimulatorSettings


class NewSession(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    kind: Literal["plan", "topup"]
    amount_usd: str
    plan: str | None = None
    description: str
    success_url: str
    cancel_url: str


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Checkout · local payment provider</title>
<style>body{{font:16px system-ui,sans-serif;background:#f3f4f6;margin:0}}
main{{max-width:420px;margin:4rem auto;background:#fff;border:1px solid #d1d5db;border-radius:10px;padding:1.5rem}}
.amount{{font-size:2rem;font-weight:700}} form{{display:inline}}
button{{font:inherit;padding:.5rem 1.2rem;border-radius:6px;border:1px solid #9ca3af;background:#fff}}
button.pay{{background:#166534;border-color:#166534;color:#fff}}</style></head>
<body><main><h1>Checkout</h1><p>Local payment provider (no money moves)</p>
<p class="item">{description}</p><p class="amount">${amount}</p>{note}
<form method="post" action="/provider/checkout/{id}/pay"><button class="pay" type="submit">Pay</button></form>
<form method="post" action="/provider/checkout/{id}/cancel"><button type="submit">Cancel</button></form>
</main></body></html>"""


class LocalPaymentProvider:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.sessions: dict[str, NewSession] = {}
        self.paid: dict[str, str] = {}
        """checkout id -> provider payment id, once paid."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/provider/v1/checkout/sessions", self.create)
        app.router.add_get("/provider/checkout/{id}", self.page)
        app.router.add_post("/provider/checkout/{id}/pay", self.pay)
        app.router.add_post("/provider/checkout/{id}/cancel", self.cancel)

    async def create(self, request: web.Request) -> web.Response:
        try:
            session = msgspec.json.decode(await request.read(), type=NewSession)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": {"code": "invalid_request", "message": str(exc)}}, status=400)
        checkout_id = f"cs_{secrets.token_hex(12)}"
        self.sessions[checkout_id] = session
        base = self.settings.payment_provider_public_url.rstrip("/") or str(request.url.origin())
        url = f"{base}/provider/checkout/{checkout_id}"
        return web.json_response({"id": checkout_id, "url": url}, status=201)

    def _session(self, request: web.Request) -> tuple[str, NewSession]:
        checkout_id = request.match_info["id"]
        session = self.sessions.get(checkout_id)
        if session is None:
            raise web.HTTPNotFound(text="no such checkout")
        return checkout_id, session

    async def page(self, request: web.Request, note: str = "", status: int = 200) -> web.Response:
        checkout_id, session = self._session(request)
        text = PAGE.format(id=checkout_id, description=html.escape(session.description),
                           amount=html.escape(session.amount_usd), note=note)  # fmt: skip
        return web.Response(text=text, content_type="text/html", status=status)

    async def pay(self, request: web.Request) -> web.Response:
        checkout_id, session = self._session(request)
        payment_id = self.paid.setdefault(checkout_id, f"pi_{secrets.token_hex(12)}")
        event = {
            "id": f"evt_{payment_id}",
            "type": "checkout.completed",
            "data": {"account_id": session.account_id, "checkout_id": checkout_id, "payment_id": payment_id,
                     "kind": session.kind, "plan": session.plan, "amount_usd": session.amount_usd,
                     "paid_at": datetime.now(UTC).isoformat()},
        }  # fmt: skip
        body = msgspec.json.encode(event)
        signature = paymentwebhooks.sign(self.settings.payment_webhook_secret, body, int(time.time()))
        headers = {paymentwebhooks.HEADER: signature, "Content-Type": "application/json"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client,
                client.post(self.settings.payment_webhook_url, data=body, headers=headers) as response,
            ):
                delivered = response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            delivered = False
        if not delivered:
            return await self.page(request, "<p role='alert'>The shop did not confirm the payment; try again.</p>", 502)
        raise web.HTTPSeeOther(session.success_url)

    async def cancel(self, request: web.Request) -> web.Response:
        _, session = self._session(request)
        raise web.HTTPSeeOther(session.cancel_url)
