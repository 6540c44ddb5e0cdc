"""Signing in: the password form, one-time links, signing out, and the language switch."""

import asyncio
import re

from aiohttp import web

from services.console import auth, i18n
from services.console.confirm import EmailConfirmations
from services.console.owners import EmailTaken
from services.console.site import LANGUAGE_COOKIE, SESSION_COOKIE, Site

LOCKED = "Too many wrong passwords. Sign-in is locked for a while; try again later."
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class SignInPages:
    def __init__(self, site: Site, confirmations: EmailConfirmations, lockout: auth.Lockout | None = None) -> None:
        self.site = site
        self.confirmations = confirmations
        self.owners = site.owners
        self.clock = site.clock
        self.lockout = lockout or auth.Lockout()

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.home)
        r.add_get("/sign-in", self.sign_in_page)
        r.add_post("/sign-in", self.sign_in)
        r.add_get("/sign-in/link/{secret}", self.link_page)
        r.add_post("/sign-in/link/{secret}", self.use_link)
        r.add_post("/sign-out", self.sign_out)
        r.add_post("/language", self.set_language)

    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/subscription" if await self.site.account(request) else "/sign-in")

    async def sign_in_page(self, request: web.Request) -> web.Response:
        return self.site.render(request, "sign_in.html", email="", error=None)

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))[: auth.MAX_PASSWORD]
        address = self.site.client_address(request)
        now = self.clock.now()
        since = now - self.lockout.window
        email_failures = await self.owners.failures("email", email, since)
        address_failures = await self.owners.failures("address", address, since)
        if self.lockout.locked(email_failures, address_failures):
            return self.site.render(request, "sign_in.html", 429, email=email, error=LOCKED)
        owner = await self.owners.by_email(email) if email else None
        matches = await asyncio.to_thread(auth.password_matches, owner.password_hash if owner else None, password)
        if owner is None or not matches:
            await self.owners.record_failure(email, address, now)
            await asyncio.sleep(self.lockout.delay_s(max(email_failures, address_failures) + 1))
            return self.site.render(request, "sign_in.html", 401, email=email, error="Wrong email or password.")
        await self.owners.forget_failures(email, since)
        return self.site.start_session(request, await self.owners.start_session(owner.account_id, now))

    async def link_page(self, request: web.Request) -> web.Response:
        owner = await self.owners.link_owner(request.match_info["secret"], self.clock.now())
        if owner is None:
            return self._expired_link(request)
        return self.site.render(request, "set_password.html", needs_email=owner.email is None, error=None)

    def _expired_link(self, request: web.Request) -> web.Response:
        return self.site.render(request, "error.html", 410, title="Link no longer valid",
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
            return self.site.render(request, "set_password.html", 400, needs_email=owner.email is None, error=problem)
        password_hash = await asyncio.to_thread(auth.hash_password, password)
        try:
            account_id = await self.owners.use_link(secret, email, password_hash, now)
        except EmailTaken:
            return self.site.render(request, "set_password.html", 409, needs_email=True,
                                error="That email belongs to another account.")  # fmt: skip
        if account_id is None:
            return self._expired_link(request)
        if email is not None:  # typed here, not the one the link was sent to: confirmed by a mailed link
            await self.confirmations.send(account_id, email)
        return self.site.start_session(request, await self.owners.start_session(account_id, now))

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
            self.site.set_cookie(request, response, LANGUAGE_COOKIE, lang, max_age=365 * 24 * 3600)
        raise response
