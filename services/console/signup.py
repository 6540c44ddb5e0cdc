"""Signing up: a Free account with its first model key shown once, and the email confirmed by a
link sent through the mail adapter (a paid checkout needs a confirmed email). Sign-ups are
limited per client address."""

import asyncio
import re
from datetime import timedelta

from aiohttp import web

from services.console import auth
from services.console.accountapi import AccountApi, AccountApiError
from services.console.mail import Mailer, MailFailed
from services.console.site import SESSION_COOKIE, Site

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TOO_MANY = "Too many sign-ups from your address. Try again in an hour."
TAKEN = "An account with this email exists. Sign in instead."
BAD_EMAIL = "Enter the email you will sign in with."


class SignUpPages:
    def __init__(self, site: Site, api: AccountApi, mailer: Mailer, base_url: str, per_hour: int) -> None:
        self.site = site
        self.owners = site.owners
        self.api = api
        self.mailer = mailer
        self.base_url = base_url
        self.per_hour = per_hour

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/sign-up", self.sign_up_page)
        app.router.add_post("/sign-up", self.sign_up)
        app.router.add_get("/confirm-email/{token}", self.confirm)

    async def sign_up_page(self, request: web.Request) -> web.Response:
        return self.site.render(request, "sign_up.html", email="", error=None)

    async def sign_up(self, request: web.Request) -> web.Response:
        form = await request.post()
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))
        address = request.remote or "unknown"
        now = self.site.clock.now()
        problem = BAD_EMAIL if not _EMAIL.match(email) else auth.password_problem(password)
        if problem is not None:
            return self.site.render(request, "sign_up.html", 400, email=email, error=problem)
        if await self.owners.sign_ups(address, now - timedelta(hours=1)) >= self.per_hour:
            return self.site.render(request, "sign_up.html", 429, email=email, error=TOO_MANY)
        await self.owners.record_sign_up(address, now)
        try:
            account = await self.api.create_account(email)
        except AccountApiError as exc:
            status, error = (409, TAKEN) if exc.code == "email_taken" else (503, exc.message)
            return self.site.render(request, "sign_up.html", status, email=email, error=error)
        await self.owners.set_password(
            account["account_id"], await asyncio.to_thread(auth.hash_password, password), now
        )
        mailed = await self._send_confirmation(account["account_id"], email)
        session_id = await self.owners.start_session(account["account_id"], now)
        response = self.site.render(request, "welcome.html", 201, email=email, key=account["key"], mailed=mailed)
        self.site.set_cookie(request, response, SESSION_COOKIE, session_id, int(auth.SESSION_ABSOLUTE.total_seconds()))
        return response

    async def _send_confirmation(self, account_id: str, email: str) -> bool:
        token = await self.owners.new_confirmation(account_id, email, self.site.clock.now())
        link = f"{self.base_url}/confirm-email/{token}"
        text = f"Confirm your email for flowplan by opening this link within 24 hours:\n\n{link}\n"
        try:
            await self.mailer.send(email, "Confirm your email for flowplan", text)
        except MailFailed:
            return False
        return True

    async def confirm(self, request: web.Request) -> web.Response:
        if not await self.owners.confirm_email(request.match_info["token"], self.site.clock.now()):
            return self.site.render(request, "error.html", 410, title="Link no longer valid",
                                    message="This confirmation link was already used or has expired.")  # fmt: skip
        return self.site.render(request, "error.html", 200, title="Email confirmed",
                                message="Your email is confirmed: you can now buy a plan.")  # fmt: skip
