"""The operator's API (Bearer FLOWPLAN_ADMIN_TOKEN): accounts, payments, multipliers, suspensions."""

from aiohttp import web

from libs.pricing.money import micros_to_str
from libs.rpc import Unavailable
from libs.web import decode_body, json_response
from proto.v1 import (
    AbuseSignalsRequest,
    ConfigurePayouts,
    CreateKey,
    IssueSignInLink,
    RevokeAnyKey,
    SignInLinkIssued,
    SuspendAccount,
    rpc,
)
from services.ingress import admin, views
from services.ingress.routes.edge import Edge, int_query


class AdminRoutes(Edge):
    async def create_account(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        command = decode_body(await request.read(), admin.CreateAccount)
        account = admin.create_account(command, self.clock.now())
        # The console first: an email another owner has refuses the request before anything is stored.
        link = await self._sign_in_link(IssueSignInLink(account_id=account.account_id, email=command.email), True)
        seq = await self._publish([account])
        issued = await self._ask(rpc.KEYS_CREATE, CreateKey(account_id=account.account_id, name="default",
                                                            kind="subscription"))  # fmt: skip
        management = await self._ask(
            rpc.KEYS_CREATE, CreateKey(account_id=account.account_id, name="management", kind="management")
        )
        await self._until_quota_applied(account.account_id, seq)
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
            return await self._ask(rpc.CONSOLE_SIGN_IN_LINK, command)
        except Unavailable:
            if optional:
                return None
            raise

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
        reply = await self._ask(rpc.KEYS_SUSPEND, SuspendAccount(account_id=account_id, suspended=suspended,
                                                                 reason=reason))  # fmt: skip
        self.suspensions.learn(reply)
        return json_response(
            {"account_id": account_id, "suspended": reply.suspended, "changed": reply.changed,
             "since": views.timestamp(reply.since)}
        )  # fmt: skip

    async def admin_revoke_key(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        revoked = await self._ask(rpc.KEYS_REVOKE_ANY, RevokeAnyKey(key_id=request.match_info["key_id"]))
        key = revoked.keys[0]
        return json_response({**views.key(key), "account_id": key.account_id, "revoked": True})

    async def record_payment(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        command = admin.payment_command(account_id, decode_body(await request.read(), admin.PaymentIn))
        accepted = await self._ask(rpc.BILLING_RECORD_PAYMENT, command)
        await self._until_quota_applied(account_id, accepted.seq)
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
        min_score = int_query(request, "min_score", 1, 0, 100)
        limit = int_query(request, "limit", 100, 1, 1000)
        reply = await self._ask(rpc.BILLING_ABUSE_SIGNALS, AbuseSignalsRequest(min_score=min_score, limit=limit))
        return json_response({"object": "list", "data": [views.account_abuse(a) for a in reply.accounts]})

    async def top_up(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        account_id = self._account_exists(request)
        body = decode_body(await request.read(), admin.TopUpIn)
        command = admin.top_up_command(account_id, body, request.headers.get("Idempotency-Key"))
        accepted = await self._ask(rpc.BILLING_TOP_UP, command)
        await self._until_quota_applied(account_id, accepted.seq)
        return json_response(
            {
                "account_id": account_id,
                "topup_ref": accepted.topup_ref,
                "amount_usd": micros_to_str(accepted.amount_micros, 2),
            },
            201,
        )

    async def set_flow_rate(self, request: web.Request) -> web.Response:
        self._require_token(request, self.settings.admin_token)
        event = admin.set_flow_rate(decode_body(await request.read(), admin.SetFlowRate), self.clock.now())
        await self._publish([event])
        return json_response({"usd_per_flow": event.usd_per_flow, "effective_at": views.timestamp(event.occurred_at)})

    async def configure_payouts(self, request: web.Request) -> web.Response:
        """Tell the local payment provider to decline payouts (or to pay again): for tests and demos."""
        self._require_token(request, self.settings.admin_token)
        body = decode_body(await request.read(), admin.PayoutSettings)
        command = ConfigurePayouts(fail_payouts=body.fail_payouts)
        reply = await self._ask(rpc.REFUND_PAYOUTS, command)
        return json_response({"provider": reply.provider, "fail_payouts": reply.fail_payouts})
