"""The SMTP mail adapter (FLOWPLAN_SMTP_URL) against a real SMTP server the test starts (aiosmtpd
on loopback): the message, logging in, the failures the console answers as "mail failed", and a
sign-up's mail reaching the server instead of the local mailbox."""

import asyncio
import re
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from libs.localservers import free_port
from services.console.mail import MailFailed, SmtpMailer
from tests.e2e.conftest import PASSWORD, Browser, token
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"p@ss word")
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False)
    controller.start()
    yield inbox, port
    controller.stop()


async def test_a_message_is_sent_logged_in_with_its_sender_subject_and_text(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    mailer = SmtpMailer(f"smtp://mailer:p%40ss%20word@127.0.0.1:{port}", "flowplan <no-reply@example.com>")
    await mailer.send("owner@example.com", "Hello", "A line.\n")
    [(recipients, message)] = inbox.messages[-1:]
    assert recipients == ["owner@example.com"]
    assert message["From"] == "flowplan <no-reply@example.com>" and message["Subject"] == "Hello"
    assert message.get_payload(decode=True).decode().strip() == "A line."


async def test_refusals_and_outages_are_mail_failed(smtp: tuple[Inbox, int]) -> None:
    _, port = smtp
    with pytest.raises(MailFailed):
        await SmtpMailer(f"smtp://mailer:wrong@127.0.0.1:{port}", "x@example.com").send("a@example.com", "s", "t")
    with pytest.raises(MailFailed):
        await SmtpMailer(f"smtp://127.0.0.1:{free_port()}", "x@example.com", timeout_s=2).send(
            "a@example.com", "s", "t"
        )
    for bad in ("http://127.0.0.1:25", "smtp://", "127.0.0.1:25"):
        with pytest.raises(ValueError, match="FLOWPLAN_SMTP_URL"):
            SmtpMailer(bad, "x@example.com")
    secure = SmtpMailer("smtps://u:p@mail.example.com", "x@example.com")
    assert (secure.tls, secure.port, secure.user) == (True, 465, "u")
    assert SmtpMailer("smtp://h?starttls=true", "x@example.com").starttls


async def test_the_console_sends_its_sign_up_mail_through_smtp(stack: Stack, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    await asyncio.to_thread(stack.console.stop)
    env = {"FLOWPLAN_SMTP_URL": f"smtp://mailer:p%40ss%20word@127.0.0.1:{port}", "FLOWPLAN_MAIL_FROM": "fp@example.com"}
    await asyncio.to_thread(stack.console.start, env)
    email = f"smtp-{uuid.uuid4().hex[:8]}@example.com"
    visitor = Browser(stack)
    try:
        response = await visitor.post("/sign-up", {"email": email, "password": PASSWORD}, csrf_from="/sign-up")
        assert response.status == 202

        async def delivered() -> Any:
            return next((m for to, m in inbox.messages if to == [email]), None)

        message = await eventually(delivered)
        assert message["From"] == "fp@example.com" and message["Subject"] == "Finish creating your flowplan account"
        link = re.search(r"/sign-up/finish/\S+", message.get_payload(decode=True).decode())
        assert link is not None
        created = await visitor.post(link.group(0), {"csrf": token((await visitor.get(link.group(0)))[1])})
        assert created.status == 201
    finally:
        await visitor.close()
