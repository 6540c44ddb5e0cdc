"""The subscription page and what the owner does on it, through the account API; and /pricing."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web

from services.console import views
from services.console.accountapi import AccountApi, AccountApiError
from services.console.conversations import Conversations
from services.console.site import Site

PAGE_SIZE = 20
UNCONFIRMED = "Confirm your email first: open the link we sent you."
EMAIL_NOTICES = {
    "confirmed": "Your email is confirmed. You can buy a paid plan whenever you like.",
    "sent": "We sent you a new confirmation link.",
    "not-sent": "No new link was sent: one went out less than a minute ago, or the mail could not be sent.",
}
RECENT_CALLS = 1000
"""What Extra Usage spent is summed from the latest calls billed to the balance."""


class SubscriptionPages:
    def __init__(self, site: Site, api: AccountApi, conversations: Conversations) -> None:
        self.site = site
        self.api = api
        self.conversations = conversations
        self.clock = site.clock

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/pricing", self.pricing)
        r.add_get("/subscription", self.subscription)
        r.add_post("/keys", self.create_key)
        r.add_post("/keys/{key_id}/rotate", self.rotate_key)
        r.add_post("/keys/{key_id}/revoke", self.revoke_key)
        r.add_post("/extra-usage", self.extra_usage)
        r.add_post("/refunds", self.request_refund)
        r.add_post("/checkout", self.checkout)

    async def pricing(self, request: web.Request) -> web.Response:
        """Public: the plans at the Flow rate in force, as the account API's /v1/plans computes them."""
        try:
            plans = await self.api.get(None, "/v1/plans")
        except AccountApiError as exc:
            return self.site.render(request, "error.html", 503, title="Not available", message=exc.message)
        signed_in = await self.site.account(request) is not None
        return self.site.render(request, "pricing.html", signed_in=signed_in, **views.pricing(plans))

    async def subscription(self, request: web.Request) -> web.Response:
        account_id = await self.site.signed_in(request)
        return await self._subscription(request, account_id)

    async def _subscription(self, request: web.Request, account_id: str, status: int = 200,
                            **extra: Any) -> web.Response:  # fmt: skip
        filters = {name: request.query[name] for name in ("key", "model", "chart") if request.query.get(name)}
        back = timedelta(days=views.CHART_DAYS.get(views.chart_view(filters.get("chart")), 0) + 1)
        chart_from = f"{self.clock.now() - back:%Y-%m-%dT%H:%M:%SZ}"  # a day more: the first day in any zone
        try:
            usage, calls, payg, hours, keys, history, refunds, plans, costs = await asyncio.gather(
                self.api.get(account_id, "/v1/account/usage"),
                self.api.get(account_id, "/v1/account/usage/events", **_calls_query(request, filters)),
                self.api.get(account_id, "/v1/account/usage/events", limit=RECENT_CALLS, billing_mode="payg"),
                self.api.get(account_id, "/v1/account/costs", group_by="hour", **{"from": chart_from}),
                self.api.get(account_id, "/v1/keys"),
                self.api.get(account_id, "/v1/billing/history", limit=50),
                self.api.get(account_id, "/v1/refunds"),
                self.api.get(None, "/v1/plans"),
                self.api.get(account_id, "/v1/account/costs", group_by="model"),
            )
        except AccountApiError as exc:
            # A 400 is the owner's own query (a cursor or filter edited in the address bar).
            return self.site.render(request, "error.html", exc.status if exc.status in (400, 503) else 502,
                                    title="Not available", message=exc.message)  # fmt: skip
        preview, preview_error = None, None
        if request.query.get("refund") == "preview":
            try:
                preview = await self.api.get(account_id, "/v1/refunds/preview")
            except AccountApiError as exc:
                preview_error = views.refusal(exc.reason or exc.code, exc.message)
        context = views.subscription(
            account_id, usage, calls, payg["data"], hours["data"], keys["data"], history["data"], refunds["data"],
            plans, self.clock.now(), filters, costs["data"], self.site.zone(request),
        )  # fmt: skip
        notice = {"paid": "Payment received.", "cancelled": "Checkout cancelled."}.get(
            request.query.get("checkout", "")
        ) or EMAIL_NOTICES.get(request.query.get("email", ""))
        context["unconfirmed_email"] = await self.site.owners.unconfirmed_email(account_id)
        context.update(preview=preview, preview_error=preview_error, new_secret=None, error=None, notice=notice)
        context["conversation_titles"] = await self.conversations.titles(account_id)  # the calls from Studio Chat
        context.update(extra)
        return self.site.render(request, "subscription.html", status, **context)

    async def _acting(self, request: web.Request, action: Callable[[str], Awaitable[web.Response]]) -> web.Response:
        """Run a change for the signed-in owner; a refusal is shown on the page with the API's words."""
        account_id = await self.site.signed_in(request)
        try:
            return await action(account_id)
        except AccountApiError as exc:
            status = exc.status if exc.status < 500 else 503
            return await self._subscription(request, account_id, status, error=exc.message)

    async def create_key(self, request: web.Request) -> web.Response:
        form = await request.post()
        name, kind = str(form.get("name", "")).strip(), str(form.get("kind", ""))

        async def create(account_id: str) -> web.Response:
            issued = await self.api.call(account_id, "POST", "/v1/keys", json={"name": name, "kind": kind})
            return await self._subscription(request, account_id, new_secret=issued)

        return await self._acting(request, create)

    async def rotate_key(self, request: web.Request) -> web.Response:
        key_id = quote(request.match_info["key_id"], safe="")

        async def rotate(account_id: str) -> web.Response:
            issued = await self.api.call(account_id, "POST", f"/v1/keys/{key_id}/rotate")
            return await self._subscription(request, account_id, new_secret=issued)

        return await self._acting(request, rotate)

    async def revoke_key(self, request: web.Request) -> web.Response:
        key_id = quote(request.match_info["key_id"], safe="")

        async def revoke(account_id: str) -> web.Response:
            await self.api.call(account_id, "DELETE", f"/v1/keys/{key_id}")
            raise web.HTTPSeeOther("/subscription#keys")

        return await self._acting(request, revoke)

    async def extra_usage(self, request: web.Request) -> web.Response:
        form = await request.post()
        body: dict[str, Any] = {"enabled": form.get("enabled") == "true"}
        if form.get("payg_key_id"):
            body["payg_key_id"] = str(form["payg_key_id"])

        async def change(account_id: str) -> web.Response:
            await self.api.call(account_id, "PUT", "/v1/account/extra-usage", json=body)
            raise web.HTTPSeeOther("/subscription#extra-usage")

        return await self._acting(request, change)

    async def checkout(self, request: web.Request) -> web.Response:
        """A plan's month or a top-up: on to the payment provider's checkout page."""
        form = await request.post()
        body = {"plan": str(form["plan"])} if form.get("plan") else {"topup_usd": str(form.get("topup_usd", ""))}

        async def start(account_id: str) -> web.Response:
            if not await self.site.owners.email_confirmed(account_id):
                return await self._subscription(request, account_id, 403, error=UNCONFIRMED)
            session = await self.api.call(account_id, "POST", "/v1/billing/checkout", json=body)
            raise web.HTTPSeeOther(session["checkout_url"])

        return await self._acting(request, start)

    async def request_refund(self, request: web.Request) -> web.Response:
        async def refund(account_id: str) -> web.Response:
            await self.api.call(account_id, "POST", "/v1/refunds")
            raise web.HTTPSeeOther("/subscription#refund")

        return await self._acting(request, refund)


def _calls_query(request: web.Request, filters: dict[str, str]) -> dict[str, str | int]:
    """One page of the per-call detail: the account API pages by cursor and filters server-side."""
    query: dict[str, str | int] = {"limit": PAGE_SIZE}
    for ours, theirs in (("key", "key_id"), ("model", "model")):
        if ours in filters:
            query[theirs] = filters[ours]
    for cursor in ("before", "after"):
        if cursor in request.query:
            query[cursor] = request.query[cursor]
    return query
