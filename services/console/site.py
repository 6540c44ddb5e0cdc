"""What every console page shares: templates, the language, cookies, the CSRF check, security
headers, the refusal of control characters, and who is signed in."""

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from libs.clients import client_address, trusted_networks
from libs.clock import Clock
from libs.settings_views import ConsoleSettings
from libs.web import CONTROL
from services.console import auth, i18n, views
from services.console.owners import Owners

HERE = Path(__file__).parent
SESSION_COOKIE = "fp_session"
VISITOR_COOKIE = "fp_visitor"
LANGUAGE_COOKIE = "fp_lang"
ZONE_COOKIE = "fp_tz"
"""The owner's time zone, as the browser names it (console.js sets it): times are shown in it."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a sign-in link's secret is in its path: never pass it on
    "Cache-Control": "no-store",
}
FORM_EXPIRED = "This form has expired or did not come from this site. Reload the page and try again."
NOT_TEXT = "The address or the form holds control characters. Go back, remove them and try again."
CONTROL_IN_FORM = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""C0 control characters but tab and line breaks (a chat message has those), and DEL: Postgres
refuses NUL, and none belongs in an email, a name or a title."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Site:
    def __init__(self, settings: ConsoleSettings, owners: Owners, clock: Clock) -> None:
        self.settings = settings
        self.owners = owners
        self.clock = clock
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self.templates.filters.update(views.FILTERS)
        self.templates.filters.update(
            when=_localized(lambda c, value: views.when(value, c["lang"], c["zone"])),
            usd=_localized(lambda c, value: views.usd(value, c["lang"])),
            usd_exact=_localized(lambda c, value: views.usd_exact(value, c["lang"])),
        )
        provider = (
            settings.payment_provider_public_url
            or settings.payment_provider_url
            or f"http://{settings.host}:{settings.simulator_port}"
        )
        # A checkout form is answered with a redirect to the payment provider's page: allowed there only.
        self.csp = f"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self' {provider}"
        self._trusted_proxies = trusted_networks(settings.trusted_proxies)

    def client_address(self, request: web.Request) -> str:
        """Whom the per-address limits (sign-in failures, sign-ups) count: the peer, or behind a
        trusted proxy the client it names (libs.clients), so one client there locks out only itself."""
        address = client_address(request.remote, request.headers.get("X-Forwarded-For"), self._trusted_proxies)
        return address or "unknown"

    def install(self, app: web.Application) -> None:
        app.middlewares.extend([self._headers, self._csrf, self._plain_text])
        app.router.add_static("/static/", HERE / "static")

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
                self.settings.console_secret, self.basis(request), token if isinstance(token, str) else None
            ):
                return self.render(request, "error.html", 403, title="Form expired", message=FORM_EXPIRED)
        return await handler(request)

    @web.middleware
    async def _plain_text(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A control character in the path, the query or a form is a 400 page before any handler
        takes it to Postgres (a NUL in the sign-in email or a conversation id was a 500)."""
        texts = [*request.match_info.items(), *request.query.items()]
        if request.method == "POST":
            form = [(name, value) for name, value in (await request.post()).items() if isinstance(value, str)]
            if any(CONTROL_IN_FORM.search(name) or CONTROL_IN_FORM.search(value) for name, value in form):
                return self.render(request, "error.html", 400, title="Not allowed", message=NOT_TEXT)
        if any(CONTROL.search(name) or CONTROL.search(value) for name, value in texts):
            return self.render(request, "error.html", 400, title="Not allowed", message=NOT_TEXT)
        return await handler(request)

    @staticmethod
    def basis(request: web.Request) -> str | None:
        """The cookie a request's CSRF token is derived from: its session's, else its visitor's."""
        return request.cookies.get(SESSION_COOKIE) or request.cookies.get(VISITOR_COOKIE)

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        basis = self.basis(request)
        new_visitor = basis is None
        if basis is None:
            basis = auth.new_secret()
        lang = i18n.choose(request.cookies.get(LANGUAGE_COOKIE), request.headers.get("Accept-Language", ""))
        html = self.templates.get_template(template).render(
            csrf=auth.csrf_token(self.settings.console_secret, basis), static=self._static, lang=lang,
            _=i18n.translator(lang), here=request.path_qs if request.method == "GET" else "/", zone=self.zone(request),
            **context,
        )  # fmt: skip
        response = web.Response(text=html, status=status, content_type="text/html")
        if new_visitor:
            self.set_cookie(request, response, VISITOR_COOKIE, basis, max_age=None)
        return response

    @staticmethod
    def zone(request: web.Request) -> ZoneInfo:
        """The owner's zone; the script writes the cookie URL-encoded ("Asia%2FShanghai")."""
        return views.zone(unquote(request.cookies.get(ZONE_COOKIE, "")))

    @staticmethod
    def _static(name: str) -> str:
        return f"/static/{name}"

    def set_cookie(self, request: web.Request, response: web.StreamResponse, name: str, value: str,
                   max_age: int | None) -> None:  # fmt: skip
        """HttpOnly, SameSite=Lax, and Secure when the owner reaches the console over https: TLS here,
        or (the usual deployment) at a proxy in front, which FLOWPLAN_CONSOLE_URL names."""
        secure = request.secure or self.settings.console_url.startswith("https://")
        response.set_cookie(name, value, httponly=True, samesite="Lax", secure=secure, path="/", max_age=max_age)

    async def account(self, request: web.Request) -> str | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        return await self.owners.session_account(session_id, self.clock.now())

    async def signed_in(self, request: web.Request) -> str:
        account_id = await self.account(request)
        if account_id is None:
            raise web.HTTPSeeOther("/sign-in")
        return account_id

    def start_session(self, request: web.Request, session_id: str) -> web.Response:
        response = web.HTTPSeeOther("/subscription")
        self.set_cookie(request, response, SESSION_COOKIE, session_id, int(auth.SESSION_ABSOLUTE.total_seconds()))
        return response


def _localized(write: Callable[[Any, Any], str]) -> Callable[..., str]:
    """A template filter that writes its value for the page's language and the owner's time zone."""

    @jinja2.pass_context
    def localized(context: Any, value: Any) -> str:
        return write(context, value)

    return localized
