"""Confirming an owner's email by a mailed link. Sign-up confirms it by its own link, and a one-time
sign-in link mailed to the email the operator gave confirms that one; an owner who types their email
on the set-password page (the operator gave none) is sent this link, since a paid checkout needs a
confirmed email. Opening the link only shows a button (mail scanners follow links); pressing it
confirms, once. A signed-in owner whose email is not confirmed yet may ask for the link again."""

import logging
from datetime import timedelta

from aiohttp import web

from services.console.mail import MailFailed, Sender
from services.console.site import Site

log = logging.getLogger(__name__)
SUBJECT = "Confirm your email for flowplan"
TEXT = "Open this link within 24 hours to confirm this email for your flowplan account:\n\n{url}\n"
RESEND_AFTER = timedelta(minutes=1)
"""A fresh link at most this often per account: the button cannot be used to flood a mailbox."""


class EmailConfirmations:
    def __init__(self, site: Site, mailer: Sender, base_url: str) -> None:
        self.site = site
        self.owners = site.owners
        self.mailer = mailer
        self.base_url = base_url

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/confirm-email", self.resend)
        app.router.add_get("/confirm-email/{token}", self.confirm_page)
        app.router.add_post("/confirm-email/{token}", self.confirm)

    async def send(self, account_id: str, email: str) -> bool:
        """Mail a fresh link to the owner's email; False when the mail adapter failed or one was just sent."""
        now = self.site.clock.now()
        token = await self.owners.new_confirmation(account_id, email, now, now - RESEND_AFTER)
        if token is None:
            return False
        try:
            await self.mailer.send(email, SUBJECT, TEXT.format(url=f"{self.base_url}/confirm-email/{token}"))
        except MailFailed as exc:
            log.warning("confirmation mail for %s not sent: %s", account_id, exc)
            return False
        return True

    async def resend(self, request: web.Request) -> web.Response:
        account_id = await self.site.signed_in(request)
        email = await self.owners.unconfirmed_email(account_id)
        sent = email is not None and await self.send(account_id, email)
        raise web.HTTPSeeOther(f"/subscription?email={'sent' if sent else 'not-sent'}#plan")

    async def confirm_page(self, request: web.Request) -> web.Response:
        email = await self.owners.confirmation(request.match_info["token"], self.site.clock.now())
        if email is None:
            return self._link_gone(request)
        return self.site.render(request, "confirm_email.html", email=email, token=request.match_info["token"])

    async def confirm(self, request: web.Request) -> web.Response:
        if await self.owners.use_confirmation(request.match_info["token"], self.site.clock.now()) is None:
            return self._link_gone(request)
        raise web.HTTPSeeOther("/subscription?email=confirmed#plan")

    def _link_gone(self, request: web.Request) -> web.Response:
        message = "This confirmation link was already used or has expired. Ask for a new one on your subscription page."
        return self.site.render(request, "error.html", 410, title="Link no longer valid", message=message)
