"""ingress's route table: every HTTP route once, with who may call it, its body and query, and the
commands and queries it asks other services. The app is wired from it (`install`), and the OpenAPI
document (services/ingress/openapi.py, GET /openapi.json) is generated from it.

A new endpoint: its handler goes in the module of its context below (or a new one, mixed into
services/ingress/api.py's IngressApi), and one `Route` here.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from proto.v1 import rpc
from proto.v1.rpc import Rpc
from services.ingress import openapi
from services.ingress.admin import (
    CreateAccount,
    PaymentIn,
    PayoutSettings,
    SetExtraUsage,
    SetFlowRate,
    SetInsider,
    SetMultiplier,
    SignInLinkIn,
    Suspension,
    TopUpIn,
)
from services.ingress.checkout import CheckoutIn, ProviderEvent
from services.ingress.routes.account import AccountRoutes
from services.ingress.routes.admin import AdminRoutes
from services.ingress.routes.billing import BillingRoutes
from services.ingress.routes.keys import KeyRoutes, NewKey
from services.ingress.routes.metering import MeteringRoutes
from services.ingress.routes.refunds import RefundRoutes
from services.ingress.usage import UsageBatch

Who = Literal["public", "ingest", "account", "admin", "webhook"]
"""public: anyone; ingest: a metering client's token; account: an API key of the account (GET) or a
management key or the console's pass (changes); admin: FLOWPLAN_ADMIN_TOKEN; webhook: the payment
provider's signature."""
Method = Literal["GET", "POST", "PUT", "DELETE"]


@dataclass(frozen=True)
class Query:
    name: str
    kind: Literal["integer", "string", "date-time"]
    description: str


@dataclass(frozen=True)
class Route:
    method: Method
    path: str
    handler: Callable[[Any, web.Request], Awaitable[web.StreamResponse]]
    """The context's method, unbound: `install` binds it to the app's IngressApi."""
    who: Who
    summary: str
    status: int = 200
    body: type | None = None
    query: tuple[Query, ...] = ()
    asks: tuple[Rpc[Any, Any], ...] = ()
    """The commands and queries it sends: their refusals are its 4xx answers (proto/v1/rpc.py)."""


LIMIT = Query("limit", "integer", "How many, at most.")
R = Route
ROUTES: tuple[Route, ...] = (
    R("POST", "/v1/usage", MeteringRoutes.post_usage, "ingest", "Record a batch of calls' usage (idempotent by "
      "event_id); 202 once JetStream stored it.", 202, UsageBatch),
    R("GET", "/openapi.json", MeteringRoutes.get_openapi, "public", "This document (OpenAPI 3.1)."),
    R("GET", "/v1/plans", MeteringRoutes.get_plans, "public", "The plans, their USD value at the rate in force."),
    R("GET", "/v1/models", MeteringRoutes.get_models, "public", "The model catalog, OpenAI list format, with prices."),
    R("GET", "/v1/account/usage", AccountRoutes.get_account_usage, "account", "The account's windows, plan and "
      "Extra Usage.", asks=(rpc.QUOTA_STATUS,)),
    R("GET", "/v1/account/usage/events", AccountRoutes.get_account_usage_events, "account", "The account's calls, "
      "newest first, a page at a time.", query=(
          LIMIT, Query("before", "string", "Older than this cursor (next_cursor)."),
          Query("after", "string", "Newer than this cursor (prev_cursor)."),
          Query("key_id", "string", "Only this key's calls."), Query("model", "string", "Only this model's calls."),
          Query("conversation_id", "string", "Only this Studio Chat conversation's calls."),
          Query("billing_mode", "string", "Only the calls billed this way: subscription or payg."),
      ), asks=(rpc.QUOTA_EVENTS,)),
    R("GET", "/v1/keys", KeyRoutes.list_keys, "account", "The account's keys (never their secrets).",
      asks=(rpc.KEYS_LIST,)),
    R("POST", "/v1/keys", KeyRoutes.create_key, "account", "Create a key: its secret is shown once.", 201, NewKey,
      asks=(rpc.KEYS_CREATE,)),
    R("POST", "/v1/keys/{key_id}/rotate", KeyRoutes.rotate_key, "account", "A new secret; the old one stops.", 201,
      asks=(rpc.KEYS_ROTATE,)),
    R("DELETE", "/v1/keys/{key_id}", KeyRoutes.revoke_key, "account", "Revoke a key.", asks=(rpc.KEYS_REVOKE,)),
    R("POST", "/admin/v1/accounts", AdminRoutes.create_account, "admin", "Create an account with its first keys and "
      "the owner's console link.", 201, CreateAccount,
      asks=(rpc.CONSOLE_SIGN_IN_LINK, rpc.KEYS_CREATE, rpc.QUOTA_STATUS)),
    R("POST", "/admin/v1/accounts/{account_id}/payments", AdminRoutes.record_payment, "admin", "Record a payment of "
      "a plan's month.", 201, PaymentIn, asks=(rpc.BILLING_RECORD_PAYMENT, rpc.QUOTA_STATUS)),
    R("PUT", "/admin/v1/accounts/{account_id}/multiplier", AdminRoutes.set_multiplier, "admin", "Set the account's "
      "Flow value multiplier.", body=SetMultiplier),
    R("PUT", "/admin/v1/accounts/{account_id}/insider", AdminRoutes.set_insider, "admin", "Mark or unmark an "
      "insider.", body=SetInsider),
    R("GET", "/admin/v1/abuse/signals", AdminRoutes.abuse_signals, "admin", "The accounts' abuse signals.",
      query=(Query("min_score", "integer", "Only accounts scoring at least this."), LIMIT),
      asks=(rpc.BILLING_ABUSE_SIGNALS,)),
    R("POST", "/admin/v1/flow-rate", AdminRoutes.set_flow_rate, "admin", "Change the USD per Flow.",
      body=SetFlowRate),
    R("POST", "/admin/v1/accounts/{account_id}/balance", AdminRoutes.top_up, "admin", "Top up the PAYG balance "
      "(idempotent by topup_ref or Idempotency-Key).", 201, TopUpIn, asks=(rpc.BILLING_TOP_UP, rpc.QUOTA_STATUS)),
    R("PUT", "/v1/account/extra-usage", AccountRoutes.set_extra_usage, "account", "Turn Extra Usage on or off.",
      body=SetExtraUsage, asks=(rpc.KEYS_LIST, rpc.QUOTA_STATUS)),
    R("GET", "/v1/billing/history", BillingRoutes.billing_history, "account", "Payments, plan changes, top-ups and "
      "refunds, newest first.", query=(LIMIT,), asks=(rpc.BILLING_HISTORY,)),
    R("GET", "/v1/account/costs", BillingRoutes.costs, "account", "Cost analysis by model or day, and the "
      "subscription's Flows per hour.", query=(
        Query("group_by", "string", "model, day, or hour (the subscription's Flows per UTC hour)."),
        Query("from", "date-time", "From (default: 30 days back)."),
        Query("to", "date-time", "Until (default: now)."),
    ), asks=(rpc.BILLING_COSTS,)),
    R("GET", "/v1/refunds/preview", RefundRoutes.refund_preview, "account", "The refund of the latest payment as it "
      "stands.", asks=(rpc.REFUND_PREVIEW,)),
    R("POST", "/v1/refunds", RefundRoutes.request_refund, "account", "Request the refund.", 202,
      asks=(rpc.REFUND_REQUEST,)),
    R("GET", "/v1/refunds", RefundRoutes.list_refunds, "account", "The account's refunds.", asks=(rpc.REFUND_LIST,)),
    R("GET", "/v1/refunds/{refund_id}", RefundRoutes.get_refund, "account", "One refund.", asks=(rpc.REFUND_GET,)),
    R("POST", "/v1/refunds/{refund_id}/cancel", RefundRoutes.cancel_refund, "account", "Call a processing refund "
      "off.", asks=(rpc.REFUND_CANCEL,)),
    R("PUT", "/admin/v1/payment-provider", AdminRoutes.configure_payouts, "admin", "Make the local payment provider "
      "decline payouts, or pay again (tests, demos).", body=PayoutSettings, asks=(rpc.REFUND_PAYOUTS,)),
    R("POST", "/admin/v1/accounts/{account_id}/suspend", AdminRoutes.suspend, "admin", "Suspend the account's keys.",
      body=Suspension, asks=(rpc.KEYS_SUSPEND,)),
    R("POST", "/admin/v1/accounts/{account_id}/unsuspend", AdminRoutes.unsuspend, "admin", "Lift the suspension.",
      body=Suspension, asks=(rpc.KEYS_SUSPEND,)),
    R("DELETE", "/admin/v1/keys/{key_id}", AdminRoutes.admin_revoke_key, "admin", "Revoke any account's key.",
      asks=(rpc.KEYS_REVOKE_ANY,)),
    R("POST", "/admin/v1/accounts/{account_id}/sign-in-link", AdminRoutes.sign_in_link, "admin", "A fresh one-time "
      "console link for the owner.", 201, SignInLinkIn, asks=(rpc.CONSOLE_SIGN_IN_LINK,)),
    R("POST", "/v1/billing/checkout", BillingRoutes.start_checkout, "account", "A checkout on the payment provider's "
      "page: a plan's month or a top-up.", 201, CheckoutIn),
    R("POST", "/v1/webhooks/payments", BillingRoutes.payment_webhook, "webhook", "The provider's signed word that a "
      "checkout was paid.", body=ProviderEvent, asks=(rpc.BILLING_RECORD_PAYMENT, rpc.BILLING_TOP_UP)),
)  # fmt: skip


def install(app: web.Application, api: Any, routes: tuple[Route, ...] = ROUTES) -> None:
    """Add every route, its handler bound to `api` (the IngressApi; binding connects to nothing), and
    the OpenAPI document GET /openapi.json serves."""
    app[openapi.DOCUMENT] = openapi.render(routes).encode()
    for route in routes:
        handler = route.handler.__get__(api)
        if route.method == "GET":
            app.router.add_get(route.path, handler)  # and HEAD, as aiohttp does for GET
        else:
            app.router.add_route(route.method, route.path, handler)
