"""Sending mail: to the local mail adapter (the simulator's `POST /mailbox`), or, when
FLOWPLAN_SMTP_URL is set, to an SMTP server.

FLOWPLAN_SMTP_URL is `smtp://[user:password@]host[:port]` (port 25; `?starttls=true` upgrades the
connection before logging in) or `smtps://…` (TLS from the start, port 465). User and password are
URL-encoded. The sender is FLOWPLAN_MAIL_FROM."""

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp


class MailFailed(Exception):
    pass


class Sender(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


class Mailer:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/") + "/mailbox"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, to: str, subject: str, text: str) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.post(self.url, json={"to": to, "subject": subject, "text": text}) as response,
            ):
                response.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MailFailed(str(exc)) from exc


class SmtpMailer:
    def __init__(self, url: str, sender: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("FLOWPLAN_SMTP_URL: must be smtp://[user:password@]host[:port] or smtps://…")
        self.tls = parts.scheme == "smtps"
        self.starttls = parse_qs(parts.query).get("starttls", ["false"])[0].lower() in ("1", "true", "yes")
        self.host, self.port = parts.hostname, parts.port or (465 if self.tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password or "")
        self.sender, self.timeout_s = sender, timeout_s

    async def send(self, to: str, subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(text)
        try:
            await asyncio.to_thread(self._deliver, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailFailed(str(exc)) from exc

    def _deliver(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.tls:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with smtp:
            if self.starttls:
                smtp.starttls(context=context)
            if self.user is not None:
                smtp.login(self.user, self.password)
            smtp.send_message(message)
