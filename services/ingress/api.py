"""ingress's HTTP routes. Thin: authenticate, decode, call the domain, publish, answer."""

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from nats.aio.client import Client

from libs import ownerpass, paymentwebhooks, tracing
from libs.clock import Clock
from libs.db import UNAVAILABLE
from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.keycache import KeyCache, KeysUnavailable
from libs.pricing.catalog import Catalog
from libs.pricing.money import micros_to_str
from libs.settings import Settings
from libs.web import CONTROL, EARLIEST, LATEST, ApiError, decode_body, json_response
from proto.v1 import (
    AbuseSignals,
    AbuseSignalsRequest,
    AccountAccess,
    BillingCommandFailed,
    BillingHistory,
    BillingHistoryRequest,
    CancelRefund,
    ConfigurePayouts,
    ConsoleCommandFailed,
    Costs,
    CostsRequest,
    CreateKey,
    GetRefund,
    IssueSignInLink,
    KeyCommandFailed,
    KeyIssued,
    KeyList,
    ListKeys,
    ListRefunds,
    PaymentAccepted,
    PayoutsConfigured,
    PreviewRefund,
    QuotaStatus,
    QuotaStatusRequest,
    RecordPayment,
    RefundRefused,
    RefundReply,
    RequestRefund,
    RevokeAnyKey,
    RevokeKey,
    RotateKey,
    SignInLinkIssued,
    SuspendAccount,
    TopUpAccepted,
    UsageEventsReply,
    UsageEventsRequest,
    UsagePosition,
    encode,
    subjects,
)
from proto.v1.events import Event
from services.ingress import access, admin, checkout, cursors, metrics, views
from services.ingress.directory import Directory
from services.ingress.suspensions import Suspensions
from services.ingress.usage import claim, client_of, decode_batch, ingest_clients, price_batch

_status = msgspec.json.Decoder(QuotaStatus)
_history = msgspec.json.Decoder(BillingHistory | BillingCommandFailed)
_costs = msgspec.json.Decoder(Costs | BillingCommandFailed)
_abuse = msgspec.json.Decoder(AbuseSignals | BillingCommandFailed)
QUOTA_SYNC_S = 2.0
_key_reply = msgspec.json.Decoder(KeyIssued | KeyList | AccountAccess | KeyCommandFailed)
KEY_SUBJECTS = {
    CreateKey: subjects.KEYS_CREATE,
    RotateKey: subjects.KEYS_ROTATE,
    RevokeKey: subjects.KEYS_REVOKE,
    ListKeys: subjects.KEYS_LIST,
    RevokeAnyKey: subjects.KEYS_REVOKE_ANY,
    SuspendAccount: subjects.KEYS_SUSPEND,
}
KEY_ERRORS = {"key_not_found": 404, "key_revoked": 409, "key_limit_reached": 409, "last_management_key": 409}


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    kind: Literal["subscription", "payg", "management"] = "subscription"


_events = msgspec.json.Decoder(UsageEventsReply)
_refund_reply = msgspec.json.Decoder(RefundReply | RefundRefused)
_payouts_reply = msgspec.json.Decoder(PayoutsConfigured | RefundRefused)
_billing_reply = msgspec.json.Decoder(PaymentAccepted | TopUpAccepted | BillingCommandFailed)
_link_reply = msgspec.json.Decoder(SignInLinkIssued | ConsoleCommandFailed)
CONSOLE_ERRORS = {"email_taken": 409, "invalid_request": 400}
BILLING_ERRORS = {"invalid_request": 400, "ref_conflict": 409, "internal_error": 500}
REFUND_ERRORS = {"not_refundable": 409, "not_cancellable": 409, "refund_not_found": 404, "invalid_request": 400,
                 "not_supported": 409, "internal_error": 500}  # fmt: skip


class IngressApi:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        directory: Directory,
        publisher: EventPublisher,
        pool: asyncpg.Pool,
        nc: Client,
        keys: KeyCache,
        suspensions: Suspensions,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self._ingest_clients = ingest_clients(settings.ingest_token, settings.ingest_tokens)
        """Metering clients by token, parsed once (app.start has already refused a bad list)."""
        self.catalog = catalog
        self.directory = directory
        self.publisher = publisher
        self.pool = pool
        self.nc = nc
        self.keys = keys
        self.suspensions = suspensions
        self.clock = clock
        self.changes = access.ChangeLimiter(settings.account_changes_per_minute)
        self.checkouts: checkout.CheckoutProvider = checkout.LocalCheckoutProvider(
            settings.payment_provider_url or f"http://{settings.host}:{settings.simulator_port}"
        )
        self.console_url = (settings.console_url or f"http://{settings.host}:{settings.console_port}").rstrip("/")

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/usage", self.post_usage)
        r.add_get("/v1/plans", self.get_plans)
        r.add_get("/v1/models", self.get_models)
        r.add_get("/v1/account/usage", self.get_account_usage)
        r.add_get("/v1/account/usage/events", self.get_account_usage_events)
        r.add_get("/v1/keys", self.list_keys)
        r.add_post("/v1/keys", self.create_key)
        r.add_post("/v1/keys/{key_id}/rotate", self.rotate_key)
        r.add_delete("/v1/keys/{key_id}", self.revoke_key)
        r.add_post("/admin/v1/accounts", self.create_account)
        r.add_post("/admin/v1/accounts/{account_id}/payments", self.record_payment)
        r.add_put("/admin/v1/accounts/{account_id}/multiplier", self.set_multiplier)
        r.add_put("/admin/v1/accounts/{account_id}/insider", self.set_insider)
        r.add_get("/admin/v1/abuse/signals", self.abuse_signals)
        r.add_post("/admin/v1/flow-rate", self.set_flow_rate)
        r.add_post("/admin/v1/accounts/{account_id}/balance", self.top_up)
        r.add_put("/v1/account/extra-usage", self.set_extra_usage)
        r.add_get("/v1/billing/history", self.billing_history)
        r.add_get("/v1/account/costs", self.costs)
        r.add_get("/v1/refunds/preview", self.refund_preview)
        r.add_post("/v1/refunds", self.request_refund)
        r.add_get("/v1/refunds", self.list_refunds)
        r.add_get("/v1/refunds/{refund_id}", self.get_refund)
        r.add_post("/v1/refunds/{refund_id}/cancel", self.cancel_refund)
        r.add_put("/admin/v1/payment-provider", self.configure_payouts)
        r.add_post("/admin/v1/accounts/{account_id}/suspend", self.suspend)
        r.add_post("/admin/v1/accounts/{account_id}/unsuspend", self.unsuspend)
        r.add_delete("/admin/v1/keys/{key_id}", self.admin_revoke_key)
        r.add_post("/admin/v1/accounts/{account_id}/sign-in-link", self.sign_in_link)
        r.add_post("/v1/billing/checkout", self.start_checkout)
        r.add_post("/v1/webhooks/payments", self.payment_webhook)

    # -- authentication ---------------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token>", "Authorization")
        return token.strip()

    def _require_token(self, request: web.Request, expected: str) -> None:
        if not secrets.compare_digest(self._bearer(request).encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "wrong token", "Authorization")

    async def _account_of(self, request: web.Request) -> str:
        return (await self._authorized(request)).account_id

    async def _authorized(self, request: web.Request) -> access.Principal:
        """Who an account-API request acts for, once its credential may do what the request's method
        asks (access.authorize) and, for a change, the account has a change left this minute."""
        principal = await self._principal(request)
        access.authorize(principal, request.method)
        if access.needed_scope(request.method) == "manage":
            self.changes.take(principal.account_id, self.clock.now())
        return principal

    async def _principal(self, request: web.Request) -> access.Principal:
        """Who the request's credential is: an API key, or the console acting for a signed-in owner."""
        token = self._bearer(request)
        if ownerpass.is_owner_pass(token):
            account_id = ownerpass.verify(self.settings.console_secret, token, self.clock.now())
            if account_id is None:
                raise ApiError(401, "invalid_console_pass", "the console's pass is forged or expired", "Authorization")
            return access.of_console(account_id, await self.suspensions.suspended(account_id))
        try:
            key = await self.keys.authenticate(self._bearer(request), request.remote)
        except KeysUnavailable as exc:
            raise ApiError(503, "keys_unavailable", "the keys service did not answer; retry") from exc
        if key is None:
            raise ApiError(401, "invalid_api_key", "the API key is malformed, unknown or revoked", "Authorization")
        return access.of_key(key)

    def _account_exists(self, request: web.Request) -> str:
        account_id = request.match_info["account_id"]
        if account_id not in self.directory.accounts:
            raise ApiError(404, "account_not_found", f"no account {account_id!r}", "account_id")
        return account_id

    async def _publish(self, events: Sequence[Event]) -> None:
        try:
            await self.publisher.publish(events)
        except PublishFailed as exc:
            raise ApiError(503, "event_log_unavailable", "the event log did not confirm; retry") from exc
        for event in events:
            self.directory.apply(event)  # read-your-writes; the projection applies it again harmlessly

    # -- metering ---------------------------------------------------------------------

    async def post_usage(self, request: web.Request) -> web.Response:
        try:
            return await self._accept_usage(request)
        except ApiError as exc:
            metrics.usage_rejected.add(1, {"status": str(exc.status)})
            raise
        except web.HTTPRequestEntityTooLarge:
            metrics.usage_rejected.add(1, {"status": "413"})
            raise

    async def _accept_usage(self, request: web.Request) -> web.Response:
        client = client_of(self._bearer(request), self._ingest_clients)
        if client is None:
            raise ApiError(401, "unauthorized", "wrong token", "Authorization")
        records = decode_batch(await request.read(), self.settings.max_usage_batch)
        await self.directory.synced()  # several instances: what another one changed, this one knows
        events = price_batch(
            records,
            self.catalog,
            self.directory,
            self.clock.now(),
            timedelta(seconds=self.settings.accepted_lateness_s),
            timedelta(seconds=self.settings.accepted_lead_s),
            client,
        )
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # Claim the ids; the claim commits only once JetStream has stored the events,
                # so a failed publish leaves nothing claimed and the client's retry goes through.
                fresh = await claim(conn, events, client)
                await self._publish(fresh)
        except UNAVAILABLE as exc:
            raise ApiError(503, "database_unavailable", "the database is not reachable; retry") from exc
        metrics.publish_seconds.record(time.perf_counter() - started)
        metrics.usage_events.add(len(fresh), {"outcome": "accepted"})
        metrics.usage_events.add(len(events) - len(fresh), {"outcome": "duplicate"})
        return json_response({"accepted": len(fresh), "duplicates": len(events) - len(fresh)}, 202)

    # -- catalog ----------------------------------------------------------------------

    async def get_plans(self, _: web.Request) -> web.Response:
        return json_response(views.plans(self.catalog, self.directory.flow_rate.at(self.clock.now())))

    async def get_models(self, _: web.Request) -> web.Response:
        return json_response(views.models(self.catalog))

    # -- account ----------------------------------------------------------------------

    async def _ask(self, subject: str, message: msgspec.Struct, timeout_s: float | None = None) -> bytes:
        try:
            timeout = timeout_s or self.settings.request_timeout_s
            reply = await self.nc.request(subject, encode(message), timeout=timeout, headers=tracing.nats_headers())
        except Exception as exc:
            service = subject.split(".", 1)[0]
            raise ApiError(503, f"{service}_unavailable", f"the {service} service did not answer; retry") from exc
        return reply.data

    async def get_account_usage(self, request: web.Request) -> web.Response:
        principal = await self._authorized(request)
        status = await self._status(principal.account_id)
        body = views.account_usage(status)
        body["extra_usage"] = views.extra_usage(status)
        # Only the console's owner reads a suspended account (its keys are refused): the page says so.
        body["account_suspended"] = principal.suspended
        return json_response(body)

    async def get_account_usage_events(self, request: web.Request) -> web.Response:
        """The account's calls, newest first, a page at a time: `before` (older, from next_cursor) or
        `after` (newer, from prev_cursor), optionally of one key (`key_id`) and one model (`model`)."""
        account_id = await self._account_of(request)
        limit = _int_query(request, "limit", 50, 1, 1000)
        before, after = (_cursor_query(request, name) for name in ("before", "after"))
        if before is not None and after is not None:
            raise ApiError(400, "invalid_request", "after: give before or after, not both", "after")
        asked = UsageEventsRequest(
            account_id=account_id, limit=limit, before=before, after=after,
            key_id=_filter_query(request, "key_id", 128), model=_filter_query(request, "model", 200),
        )  # fmt: skip
        reply = _events.decode(await self._ask(subjects.QUOTA_EVENTS, asked))
        return json_response(views.usage_events(reply, paged_back=before is not None, paged_forward=after is not None))

    # -- admin ------------------------------------------------------------------------

    async def create_account(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        command = decode_body(await request.read(), admin.CreateAccount)
        account = admin.create_account(command, self.clock.now())
        # The console first: an email another owner has refuses the request before anything is stored.
        link = await self._sign_in_link(IssueSignInLink(account_id=account.account_id, email=command.email), True)
        await self._publish([account])
        issued = await self._key_command(CreateKey(account_id=account.account_id, name="default", kind="subscription"))
        assert isinstance(issued, KeyIssued)
        management = await self._key_command(
            CreateKey(account_id=account.account_id, name="management", kind="management")
        )
        assert isinstance(management, KeyIssued)
        await self._until_quota_shows(account.account_id, lambda status: status.known)
        return json_response(
            {
                "account_id": account.account_id, "name": command.name, "key": issued.secret, "key_id": issued.key.id,
                "management_key": management.secret, "management_key_id": management.key.id,
                "email": link.email if link else None, "sign_in_url": link.url if link else None,
            },
            201,
        )  # fmt: skip

    async def sign_in_link(self, request: web.Request) -> web.Response:
        """A fresh one-time console link for the account's owner (and, with an email, that email)."""
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        body = await request.read()
        email = decode_body(body, admin.SignInLinkIn).email if body.strip() else None
        link = await self._sign_in_link(IssueSignInLink(account_id=account_id, email=email), False)
        assert link is not None
        return json_response(
            {"account_id": account_id, "email": link.email, "sign_in_url": link.url,
             "expires_at": views.timestamp(link.expires_at)},
            201,
        )  # fmt: skip

    async def _sign_in_link(self, command: IssueSignInLink, optional: bool) -> SignInLinkIssued | None:
        """Ask the console for the link. An account is created even when no console answers
        (`sign_in_url` null; `POST .../sign-in-link` issues one later, with the email)."""
        try:
            raw = await self._ask(subjects.CONSOLE_SIGN_IN_LINK, command)
        except ApiError:
            if optional:
                return None
            raise
        reply: SignInLinkIssued | ConsoleCommandFailed = _link_reply.decode(raw)
        if isinstance(reply, ConsoleCommandFailed):
            raise ApiError(CONSOLE_ERRORS.get(reply.code, 400), reply.code, reply.message, reply.field)
        return reply

    async def suspend(self, request: web.Request) -> web.Response:
        return await self._set_suspended(request, True)

    async def unsuspend(self, request: web.Request) -> web.Response:
        return await self._set_suspended(request, False)

    async def _set_suspended(self, request: web.Request, suspended: bool) -> web.Response:
        """The keys service records it and tells every key cache at once (403 account_suspended on the
        next call, on every gateway)."""
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        body = await request.read()
        reason = decode_body(body, admin.Suspension).reason if body.strip() else ""
        reply = await self._key_command(SuspendAccount(account_id=account_id, suspended=suspended, reason=reason))
        assert isinstance(reply, AccountAccess)
        self.suspensions.learn(reply)
        return json_response(
            {"account_id": account_id, "suspended": reply.suspended, "changed": reply.changed,
             "since": views.timestamp(reply.since)}
        )  # fmt: skip

    async def admin_revoke_key(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        revoked = await self._key_command(RevokeAnyKey(key_id=request.match_info["key_id"]))
        assert isinstance(revoked, KeyList)
        key = revoked.keys[0]
        return json_response({**views.key(key), "account_id": key.account_id, "revoked": True})

    async def _until_quota_shows(self, account_id: str, done: Callable[[QuotaStatus], bool]) -> None:
        """Answer an admin command once quota applies it (its projection lags by milliseconds),
        so that the account's next call already meets the new account or plan. Bounded: past
        QUOTA_SYNC_S the events are stored all the same and the answer goes out."""
        deadline = time.monotonic() + QUOTA_SYNC_S
        while time.monotonic() < deadline:
            status = await self._status(account_id)
            if done(status):
                return
            await asyncio.sleep(0.01)

    # -- keys -------------------------------------------------------------------------

    async def _key_command(self, command: msgspec.Struct) -> KeyIssued | KeyList | AccountAccess:
        reply: KeyIssued | KeyList | AccountAccess | KeyCommandFailed = _key_reply.decode(
            await self._ask(KEY_SUBJECTS[type(command)], command)
        )
        if isinstance(reply, KeyCommandFailed):
            status = KEY_ERRORS.get(reply.code, 400)
            field = "key_id" if reply.code in ("key_not_found", "key_revoked", "last_management_key") else None
            raise ApiError(status, reply.code, reply.message, field)
        return reply

    async def list_keys(self, request: web.Request) -> web.Response:
        listed = await self._key_command(ListKeys(account_id=await self._account_of(request)))
        assert isinstance(listed, KeyList)
        return json_response({"object": "list", "data": [views.key(k) for k in listed.keys]})

    async def create_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        body = decode_body(await request.read(), NewKey)
        issued = await self._key_command(CreateKey(account_id=account_id, name=body.name, kind=body.kind))
        assert isinstance(issued, KeyIssued)
        return json_response({**views.key(issued.key), "key": issued.secret}, 201)

    async def rotate_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        issued = await self._key_command(RotateKey(account_id=account_id, key_id=request.match_info["key_id"]))
        assert isinstance(issued, KeyIssued)
        return json_response({**views.key(issued.key), "key": issued.secret}, 201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        revoked = await self._key_command(RevokeKey(account_id=account_id, key_id=request.match_info["key_id"]))
        assert isinstance(revoked, KeyList)
        return json_response({**views.key(revoked.keys[0]), "revoked": True})

    # -- admin ------------------------------------------------------------------------

    async def record_payment(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        command = admin.payment_command(account_id, decode_body(await request.read(), admin.PaymentIn))
        accepted = await self._billing_command(subjects.BILLING_RECORD_PAYMENT, command)
        assert isinstance(accepted, PaymentAccepted)
        now = self.clock.now()
        if not accepted.duplicate and accepted.effective_at <= now < accepted.paid_until:
            await self._until_quota_shows(account_id, lambda status: status.plan == accepted.plan)
        return json_response(
            {
                "account_id": account_id,
                "payment_ref": accepted.payment_ref,
                "plan": accepted.plan,
                "previous_plan": accepted.previous_plan,
                "amount_usd": micros_to_str(accepted.amount_micros, 2),
                "paid_at": views.timestamp(accepted.paid_at),
                "effective_at": views.timestamp(accepted.effective_at),
                "paid_until": views.timestamp(accepted.paid_until),
            },
            201,
        )

    async def _billing_command(self, subject: str, command: msgspec.Struct) -> PaymentAccepted | TopUpAccepted:
        """Ask billing to decide and record; it may first wait for its projection (its barrier)."""
        timeout = self.settings.request_timeout_s + self.settings.billing_barrier_wait_s
        reply: PaymentAccepted | TopUpAccepted | BillingCommandFailed = _billing_reply.decode(
            await self._ask(subject, command, timeout)
        )
        if isinstance(reply, BillingCommandFailed):
            status = BILLING_ERRORS.get(reply.code, 503)
            code = reply.code if status != 503 else "billing_unavailable"
            raise ApiError(status, code, reply.message, reply.field)
        return reply

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
            accepted = await self._billing_command(subjects.BILLING_RECORD_PAYMENT, command)
            assert isinstance(accepted, PaymentAccepted)
            now = self.clock.now()
            if not accepted.duplicate and accepted.effective_at <= now < accepted.paid_until:
                await self._until_quota_shows(command.account_id, lambda status: status.plan == accepted.plan)
            duplicate = accepted.duplicate
        else:
            before = await self._status(command.account_id)
            topped = await self._billing_command(subjects.BILLING_TOP_UP, command)
            assert isinstance(topped, TopUpAccepted)
            if not topped.duplicate:
                await self._until_quota_shows(
                    command.account_id, lambda s: s.balance_micros >= before.balance_micros + topped.amount_micros
                )
            duplicate = topped.duplicate
        return json_response({"received": event.id, "duplicate": duplicate})

    async def set_multiplier(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        event = admin.set_multiplier(
            account_id, decode_body(await request.read(), admin.SetMultiplier), self.clock.now()
        )
        await self._publish([event])
        return json_response(
            {
                "account_id": account_id,
                "multiplier": event.multiplier,
                "effective_at": views.timestamp(event.occurred_at),
            }
        )

    async def set_insider(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        event = admin.set_insider(account_id, decode_body(await request.read(), admin.SetInsider), self.clock.now())
        await self._publish([event])
        return json_response(
            {"account_id": account_id, "insider": event.insider, "effective_at": views.timestamp(event.occurred_at)}
        )

    async def abuse_signals(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        min_score = _int_query(request, "min_score", 1, 0, 100)
        limit = _int_query(request, "limit", 100, 1, 1000)
        reply = _billing_read(
            _abuse.decode(
                await self._ask(subjects.BILLING_ABUSE_SIGNALS, AbuseSignalsRequest(min_score=min_score, limit=limit))
            )
        )
        return json_response({"object": "list", "data": [views.account_abuse(a) for a in reply.accounts]})

    async def top_up(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        body = decode_body(await request.read(), admin.TopUpIn)
        command = admin.top_up_command(account_id, body, request.headers.get("Idempotency-Key"))
        before = await self._status(account_id)
        accepted = await self._billing_command(subjects.BILLING_TOP_UP, command)
        assert isinstance(accepted, TopUpAccepted)
        if not accepted.duplicate:
            await self._until_quota_shows(
                account_id, lambda s: s.balance_micros >= before.balance_micros + accepted.amount_micros
            )
        return json_response(
            {
                "account_id": account_id,
                "topup_ref": accepted.topup_ref,
                "amount_usd": micros_to_str(accepted.amount_micros, 2),
            },
            201,
        )

    async def set_extra_usage(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        command = decode_body(await request.read(), admin.SetExtraUsage)
        listed = await self._key_command(ListKeys(account_id=account_id))
        assert isinstance(listed, KeyList)
        payg = {k.id for k in listed.keys if k.kind == "payg" and k.revoked_at is None}
        event = admin.set_extra_usage(account_id, command, payg, self.clock.now())
        await self._publish([event])
        await self._until_quota_shows(
            account_id, lambda s: (s.extra_usage, s.payg_key_id) == (event.enabled, event.payg_key_id)
        )
        return json_response(views.extra_usage(await self._status(account_id)))

    async def billing_history(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        limit = _int_query(request, "limit", 100, 1, 1000)
        reply = _billing_read(
            _history.decode(
                await self._ask(subjects.BILLING_HISTORY, BillingHistoryRequest(account_id=account_id, limit=limit))
            )
        )
        entries = [views.billing_entry(e) for e in reply.entries]
        return json_response({"object": "list", "data": entries, "balance_usd": micros_to_str(reply.balance_micros)})

    async def costs(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        group_by = request.query.get("group_by", "model")
        if group_by not in ("model", "day"):
            raise ApiError(400, "invalid_request", "group_by: must be model or day", "group_by")
        until = _time_query(request, "to", self.clock.now())
        since = _time_query(request, "from", until - timedelta(days=30))
        if since > until:
            raise ApiError(400, "invalid_request", "from: must not be after to", "from")
        reply = _billing_read(
            _costs.decode(
                await self._ask(
                    subjects.BILLING_COSTS,
                    CostsRequest(account_id=account_id, group_by=group_by, since=since, until=until),
                )
            )
        )
        return json_response(views.costs(group_by, since, until, reply.lines))

    # -- refunds ----------------------------------------------------------------------

    async def _refund(self, subject: str, message: msgspec.Struct) -> RefundReply:
        """Ask the refund service; it may first wait for its projection to catch up (the barrier)."""
        timeout = self.settings.request_timeout_s + self.settings.refund_barrier_wait_s
        reply: RefundReply | RefundRefused = _refund_reply.decode(await self._ask(subject, message, timeout))
        if isinstance(reply, RefundRefused):
            status = REFUND_ERRORS.get(reply.code, 503)
            field = "refund_id" if reply.code == "refund_not_found" else None
            raise ApiError(status, reply.code, reply.message, field, reason=reply.reason if status == 409 else None)
        return reply

    async def refund_preview(self, request: web.Request) -> web.Response:
        reply = await self._refund(subjects.REFUND_PREVIEW, PreviewRefund(account_id=await self._account_of(request)))
        assert reply.quote is not None
        return json_response(views.refund_preview(reply.quote))

    async def request_refund(self, request: web.Request) -> web.Response:
        reply = await self._refund(subjects.REFUND_REQUEST, RequestRefund(account_id=await self._account_of(request)))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund), 202)

    async def get_refund(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        refund_id = request.match_info["refund_id"]
        reply = await self._refund(subjects.REFUND_GET, GetRefund(account_id=account_id, refund_id=refund_id))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund))

    async def cancel_refund(self, request: web.Request) -> web.Response:
        account_id = await self._account_of(request)
        refund_id = request.match_info["refund_id"]
        reply = await self._refund(subjects.REFUND_CANCEL, CancelRefund(account_id=account_id, refund_id=refund_id))
        assert reply.refund is not None
        return json_response(views.refund(reply.refund))

    async def list_refunds(self, request: web.Request) -> web.Response:
        reply = await self._refund(subjects.REFUND_LIST, ListRefunds(account_id=await self._account_of(request)))
        return json_response({"object": "list", "data": [views.refund(r) for r in reply.refunds]})

    async def configure_payouts(self, request: web.Request) -> web.Response:
        """Tell the local payment provider to decline payouts (or to pay again): for tests and demos."""
        self._require_token(request, self.settings.admin_token)
        body = decode_body(await request.read(), admin.PayoutSettings)
        command = ConfigurePayouts(fail_payouts=body.fail_payouts)
        reply = _payouts_reply.decode(await self._ask(subjects.REFUND_PAYOUTS, command))
        if isinstance(reply, RefundRefused):
            raise ApiError(409, reply.code, reply.message)
        return json_response({"provider": reply.provider, "fail_payouts": reply.fail_payouts})

    async def _status(self, account_id: str) -> QuotaStatus:
        return _status.decode(await self._ask(subjects.QUOTA_STATUS, QuotaStatusRequest(account_id=account_id)))

    async def set_flow_rate(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        event = admin.set_flow_rate(decode_body(await request.read(), admin.SetFlowRate), self.clock.now())
        await self._publish([event])
        return json_response({"usd_per_flow": event.usd_per_flow, "effective_at": views.timestamp(event.occurred_at)})


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name}: must be a whole number", name) from exc
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name}: must be between {low} and {high}", name)
    return value


def _cursor_query(request: web.Request, name: str) -> UsagePosition | None:
    raw = request.query.get(name)
    return None if raw is None else cursors.decode(raw, name)


def _filter_query(request: web.Request, name: str, max_length: int) -> str | None:
    """An exact-match filter; empty means none (an HTML form's "all")."""
    raw = request.query.get(name, "")
    if not raw:
        return None
    if len(raw) > max_length or CONTROL.search(raw):
        raise ApiError(400, "invalid_request", f"{name}: at most {max_length} characters, none of them control "
                       "characters", name)  # fmt: skip
    return raw


def _time_query(request: web.Request, name: str, default: datetime) -> datetime:
    """An RFC 3339 time or a date (UTC) from the query string."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name}: not an RFC 3339 time or date: {raw!r}", name) from exc
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:
        raise ApiError(400, "invalid_request", f"{name}: must lie between {EARLIEST.year} and {LATEST.year}", name)
    return value


R = TypeVar("R")


def _billing_read(reply: R | BillingCommandFailed) -> R:
    """billing's answer to a query, or the error it answered with instead."""
    if isinstance(reply, BillingCommandFailed):
        status = BILLING_ERRORS.get(reply.code, 503)
        raise ApiError(status, reply.code if status != 503 else "billing_unavailable", reply.message, reply.field)
    return reply
