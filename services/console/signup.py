"""Signing up: the form sends a link through the mail adapter, and the link creates a Free account
with its owner signed in, its first model key shown once and its email confirmed (a paid checkout
needs a confirmed email). The form's answer does not say whether the email has an account already.
Sign-ups are limited per client address. Owners the operator created confirm theirs with
the one-time sign-in link mailed to them."""

import asyncio
import re
from datetime import timedelta

from aiohttp import web

from services.console import auth
from services.console.accountapi import AccountApi, AccountApiError
from services.console.mail import MailFailed, Sender
from services.console.site import SESSION_COOKIE, Site

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TOO_MANY = "Too many sign-ups from your address. Try again in an hour."
TAKEN = "An account with this email exists. Sign in instead."
MAIL_FAILED = "We could not send the mail to finish your sign-up. Try again in a few minutes."
FINISH_SUBJECT = "Finish creating your flowplan account"
FINISH_TEXT = "Open this link within 24 hours to create your flowplan account:\n\n{url}\n"
TAKEN_SUBJECT = "Your flowplan account"
TAKEN_TEXT = (
    "Someone, maybe you, tried to create a flowplan account with this email. You have one already:\n\n"
    "{url}\n\nIf it was not you, there is nothing to do."
)
BAD_EMAIL = "Enter the email you will sign in with."


class SignUpPages:
    def __init__(self, site: Site, api: AccountApi, mailer: Sender, base_url: str, per_hour: int) -> None:
        self.site = site
        self.owners = site.owners
        self.api = api
        self.mailer = mailer
        self.base_url = base_url
        self.per_hour = per_hour

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/sign-up", self.sign_up_page)
        app.router.add_post("/sign-up", self.sign_up)
        app.router.add_get("/sign-up/finish/{token}", self.finish_page)
        app.router.add_post("/sign-up/finish/{token}", self.finish)

    async def sign_up_page(self, request: web.Request) -> web.Response:
        return self.site.render(request, "sign_up.html", email="", error=None)

    async def sign_up(self, request: web.Request) -> web.Response:
        """The same answer for a new email and a taken one ("check your email"): what differs is
        only the mail, which only the email's owner reads. A new email's mail carries the link
        that creates the account; a taken one's says there is an account already."""
        form = await request.post()
        email = str(form.get("email", "")).strip().lower()[:254]
        password = str(form.get("password", ""))
        address = self.site.client_address(request)
        now = self.site.clock.now()
        problem = BAD_EMAIL if not _EMAIL.match(email) else auth.password_problem(password)
        if problem is not None:
            return self.site.render(request, "sign_up.html", 400, email=email, error=problem)
        if await self.owners.sign_ups(address, now - timedelta(hours=1)) >= self.per_hour:
            return self.site.render(request, "sign_up.html", 429, email=email, error=TOO_MANY)
        await self.owners.record_sign_up(address, now)
        password_hash = await asyncio.to_thread(auth.hash_password, password)
        if await self.owners.email_taken(email):
            subject, text = TAKEN_SUBJECT, TAKEN_TEXT.format(url=f"{self.base_url}/sign-in")
        else:
            token = await self.owners.new_pending_sign_up(email, password_hash, now)
            subject, text = FINISH_SUBJECT, FINISH_TEXT.format(url=f"{self.base_url}/sign-up/finish/{token}")
        try:
            await self.mailer.send(email, subject, text)
        except MailFailed:
            return self.site.render(request, "sign_up.html", 503, email=email, error=MAIL_FAILED)
        return self.site.render(request, "check_email.html", 202, email=email)

    async def finish_page(self, request: web.Request) -> web.Response:
        """A GET only shows the button: a mail scanner that follows links creates nothing."""
        email = await self.owners.pending_sign_up(request.match_info["token"], self.site.clock.now())
        if email is None:
            return self._link_gone(request)
        return self.site.render(request, "finish_sign_up.html", email=email, token=request.match_info["token"])

    async def finish(self, request: web.Request) -> web.Response:
        """A Free account for the email the link reached (so it is confirmed), its owner signed in,
        its first key shown once."""
        now = self.site.clock.now()
        pending = await self.owners.use_pending_sign_up(request.match_info["token"], now)
        if pending is None:
            return self._link_gone(request)
        email, password_hash = pending
        try:
            account = await self.api.create_account(email)
        except AccountApiError as exc:
            if exc.code == "email_taken":  # taken since the mail was sent: the mailbox's owner may know
                return self.site.render(request, "error.html", 409, title="Create account", message=TAKEN)
            return self.site.render(request, "error.html", 503, title="Create account", message=exc.message)
        await self.owners.set_password(account["account_id"], password_hash, now)
        await self.owners.email_confirmed_now(account["account_id"], now)
        session_id = await self.owners.start_session(account["account_id"], now)
        response = self.site.render(request, "welcome.html", 201, email=email, key=account["key"])
        self.site.set_cookie(request, response, SESSION_COOKIE, session_id, int(auth.SESSION_ABSOLUTE.total_seconds()))
        return response

    def _link_gone(self, request: web.Request) -> web.Response:
        message = "This sign-up link was already used or has expired. Sign up again."
        return self.site.render(request, "error.html", 410, title="Link no longer valid", message=message)
