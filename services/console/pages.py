"""The console's HTTP routes. Thin: who is signed in, check the form's CSRF token, ask the
account API or the owners' tables, render a template."""

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from libs.clock import Clock
from libs.settings import Settings
from services.console import auth, i18n, views
from services.console.accountapi import AccountApi, AccountApiError
from services.console.owners import EmailTaken, Owners

HERE = Path(__file__).parent
SESSION_COOKIE = "fp_session"
VISITOR_COOKIE = "fp_visitor"
LANGUAGE_COOKIE = "fp_lang"
LOCKED = "Too many wrong passwords. Sign-in is locked for a while; try again later."
PAGE_SIZE = 20
MAX_EVENTS = 1000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a sign-in link's secret is in its path: never pass it on
    "Cache-Control": "no-store",
}
FORM_EXPIRED = "This form has expired or did not come from this site. Reload the page and try again."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsolePages:
    def __init__(self, settings: Settings, owners: Owners, api: AccountApi, clock: Clock,
                 lockout: auth.Lockout | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.owners = owners
        self.api = api
        self.clock = clock
        self.lockout = lockout or auth.Lockout()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self.templates.filters.update(views.FILTERS)
        provider = (
            settings.payment_provider_public_url
            or settings.payment_provider_url
            or f"http://{settings.host}:{settings.simulator_port}"
        )
        # A checkout form is answered with a redirect to the payment provider's page: allowed there only.
        self.csp = f"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self' {provider}"

    def routes(self, app: web.Application) -> None:
        app.middlewares.extend([self._headers, self._csrf])
        r = app.router
        r.add_get("/", self.home)
        r.add_get("/pricing", self.pricing)
        r.add_get("/sign-in", self.sign_in_page)
        r.add_post("/sign-in", self.sign_in)
        r.add_get("/sign-in/link/{secret}", self.link_page)
        r.add_post("/sign-in/link/{secret}", self.use_link)
        r.add_post("/sign-out", self.sign_out)
        r.add_get("/subscription", self.subscription)
        r.add_post("/keys", self.create_key)
        r.add_post("/keys/{key_id}/rotate", self.rotate_key)
        r.add_post("/keys/{key_id}/revoke", self.revoke_key)
        r.add_post("/extra-usage", self.extra_usage)
        r.add_post("/refunds", self.request_refund)
        r.add_post("/language", self.set_language)
        r.add_post("/checkout", self.checkout)
        r.add_static("/static/", HERE / "static")

    # -- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not request.path.startswith("/static/"):
            response.headers.update(SECURITY_HEADERS)
            response.headers["Content-Security-Policy"] = self.csp
        return response

    @web.middleware
    async def _csrf(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every state-changing request carries the token of the cookie it came with."""
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            form = await request.post()
            token = form.get("csrf")
            if not auth.csrf_ok(
                self.settings.console_secret, self._basis(request), token if isinstance(token, str) else None
            ):
                return self._render(request, "error.html", 403, title="Form expired", message=FORM_EXPIRED)
        return await handler(request)

    @staticmethod
    def _basis(request: web.Request) -> str | None:
        """The cookie a request's CSRF token is derived from: its session's, else its visitor's."""
        return request.cookies.get(SESSION_COOKIE) or request.cookies.get(VISITOR_COOKIE)

    def _render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        basis = self._basis(request)
        new_visitor = basis is None
        if basis is None:
            basis = auth.new_secret()
        lang = i18n.choose(request.cookies.get(LANGUAGE_COOKIE), request.headers.get("Accept-Language", ""))
        html = self.templates.get_template(template).render(
            csrf=auth.csrf_token(self.settings.console_secret, basis), static=self._static, lang=lang,
            _=i18n.translator(lang), here=request.path_qs if request.method == "GET" else "/", **context,
        )  # fmt: skip
        response = web.Response(text=html, status=status, content_type="text/html")
        if new_visitor:
            self._set_cookie(request, response, VISITOR_COOKIE, basis, max_age=None)
        return response

    @staticmethod
    def _static(name: str) -> str:
        return f"/static/{name}"

    @staticmethod
    def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
                    max_age: int | None) -> None:  # fmt: skip
        response.set_cookie(
            name, value, httponly=True, samesite="Lax", secure=request.secure, path="/", max_age=max_age
        )

    async def _account(self, request: web.Request) -> str | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        return await self.owners.session_account(session_id, self.clock.now())

    async def _signed_in(self, request: web.Request) -> str:
        account_id = await self._account(request)
        if account_id is None:
            raise web.HTTPSeeOther("/sign-in")
        return account_id

    def _start_session(self, request: web.Request, session_id: str) -> web.Response:
        response = web.HTTPSeeOther("/subscription")
        self._set_cookie(request, response, SESSION_COOKIE, session_id, int(auth.SESSION_ABSOLUTE.total_seconds()))
        return response

    # -- signing in -----------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/subscription" if await self._account(request) else "/sign-in")

    async def pricing(self, request: web.Request) -> web.Response:
        """Public: the plans at the Flow rate in force, as the account API's /v1/plans computes them."""
        try:
            plans = await self.api.get(None, "/v1/plans")
        except AccountApiError as exc:
            return self._render(request, "error.html", 503, title="Not available", message=exc.message)
        signed_in = await self._account(request) is not None
        return self._render(request, "pricing.html", signed_in=signed_in, **views.pricing(plans))

    async def sign_in_page(self, request: web.Request) -> web.Response:
        return self._render(request, "sign_in.html", email="", error=None)

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))[: auth.MAX_PASSWORD]
        address = request.remote or "unknown"
        now = self.clock.now()
        since = now - self.lockout.window
        email_failures = await self.owners.failures("email", email, since)
        address_failures = await self.owners.failures("address", address, since)
        if self.lockout.locked(email_failures, address_failures):
            return self._render(request, "sign_in.html", 429, email=email, error=LOCKED)
        owner = await self.owners.by_email(email) if email else None
        matches = await asyncio.to_thread(auth.password_matches, owner.password_hash if owner else None, password)
        if owner is None or not matches:
            await self.owners.record_failure(email, address, now)
            await asyncio.sleep(self.lockout.delay_s(max(email_failures, address_failures) + 1))
            return self._render(request, "sign_in.html", 401, email=email, error="Wrong email or password.")
        await self.owners.forget_failures(email, since)
        return self._start_session(request, await self.owners.start_session(owner.account_id, now))

    async def link_page(self, request: web.Request) -> web.Response:
        owner = await self.owners.link_owner(request.match_info["secret"], self.clock.now())
        if owner is None:
            return self._expired_link(request)
        return self._render(request, "set_password.html", needs_email=owner.email is None, error=None)

    def _expired_link(self, request: web.Request) -> web.Response:
        return self._render(request, "error.html", 410, title="Link no longer valid",
                            message="This sign-in link was already used or has expired. Sign in with your "
                                    "password, or ask for a new link.")  # fmt: skip

    async def use_link(self, request: web.Request) -> web.Response:
        secret = request.match_info["secret"]
        now = self.clock.now()
        owner = await self.owners.link_owner(secret, now)
        if owner is None:
            return self._expired_link(request)
        form = await request.post()
        password = str(form.get("password", ""))
        email = str(form.get("email", "")).strip().lower() if owner.email is None else None
        problem = auth.password_problem(password)
        if problem is None and email is not None and not _EMAIL.match(email):
            problem = "Enter the email you will sign in with."
        if problem is not None:
            return self._render(request, "set_password.html", 400, needs_email=owner.email is None, error=problem)
        password_hash = await asyncio.to_thread(auth.hash_password, password)
        try:
            account_id = await self.owners.use_link(secret, email, password_hash, now)
        except EmailTaken:
            return self._render(request, "set_password.html", 409, needs_email=True,
                                error="That email belongs to another account.")  # fmt: skip
        if account_id is None:
            return self._expired_link(request)
        return self._start_session(request, await self.owners.start_session(account_id, now))

    async def sign_out(self, request: web.Request) -> web.Response:
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            await self.owners.end_session(session_id, self.clock.now())
        response = web.HTTPSeeOther("/sign-in")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def set_language(self, request: web.Request) -> web.Response:
        """The language switch: sticks in a cookie for a year, back to the page it was used on."""
        form = await request.post()
        lang = str(form.get("lang", ""))
        back = str(form.get("next", "/"))
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        response = web.HTTPSeeOther(back)
        if lang in i18n.LANGUAGES:
            self._set_cookie(request, response, LANGUAGE_COOKIE, lang, max_age=365 * 24 * 3600)
        raise response

    # -- the subscription page ------------------------------------------------------------

    async def subscription(self, request: web.Request) -> web.Response:
        account_id = await self._signed_in(request)
        return await self._subscription(request, account_id)

    async def _subscription(self, request: web.Request, account_id: str, status: int = 200,
                            **extra: Any) -> web.Response:  # fmt: skip
        page = _page(request)
        filters = {name: request.query[name] for name in ("key", "model", "chart") if request.query.get(name)}
        try:
            usage, events, keys, history, refunds, plans, costs = await asyncio.gather(
                self.api.get(account_id, "/v1/account/usage"),
                self.api.get(account_id, "/v1/account/usage/events", limit=MAX_EVENTS),
                self.api.get(account_id, "/v1/keys"),
                self.api.get(account_id, "/v1/billing/history", limit=50),
                self.api.get(account_id, "/v1/refunds"),
                self.api.get(None, "/v1/plans"),
                self.api.get(account_id, "/v1/account/costs", group_by="model"),
            )
        except AccountApiError as exc:
            return self._render(request, "error.html", exc.status if exc.status >= 500 else 502,
                                title="Not available", message=exc.message)  # fmt: skip
        preview, preview_error = None, None
        if request.query.get("refund") == "preview":
            try:
                preview = await self.api.get(account_id, "/v1/refunds/preview")
            except AccountApiError as exc:
                preview_error = views.refusal(exc.reason or exc.code, exc.message)
        context = views.subscription(
            account_id, usage, events["data"], keys["data"], history["data"], refunds["data"], plans, page, PAGE_SIZE,
            self.clock.now(), filters, costs["data"],
        )  # fmt: skip
        notice = {"paid": "Payment received.", "cancelled": "Checkout cancelled."}.get(
            request.query.get("checkout", "")
        )
        context.update(preview=preview, preview_error=preview_error, new_secret=None, error=None, notice=notice)
        context.update(extra)
        return self._render(request, "subscription.html", status, **context)

    async def _acting(self, request: web.Request, action: Callable[[str], Awaitable[web.Response]]) -> web.Response:
        """Run a change for the signed-in owner; a refusal is shown on the page with the API's words."""
        account_id = await self._signed_in(request)
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
            session = await self.api.call(account_id, "POST", "/v1/billing/checkout", json=body)
            raise web.HTTPSeeOther(session["checkout_url"])

        return await self._acting(request, start)

    async def request_refund(self, request: web.Request) -> web.Response:
        async def refund(account_id: str) -> web.Response:
            await self.api.call(account_id, "POST", "/v1/refunds")
            raise web.HTTPSeeOther("/subscription#refund")

        return await self._acting(request, refund)


def _page(request: web.Request) -> int:
    try:
        page = int(request.query.get("page", "1"))
    except ValueError:
        return 1
    return max(1, min(page, MAX_EVENTS // PAGE_SIZE))
