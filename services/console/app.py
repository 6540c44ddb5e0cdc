"""console's composition root: its owners' tables, the sign-in-link responder for the admin API,
the account API client it acts through, and the pages."""

from pathlib import Path

from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.refusal import Refusal
from libs.runtime import Runtime
from libs.settings_views import ConsoleSettings
from proto.v1 import IssueSignInLink, SignInLinkIssued, rpc
from services.console.accountapi import AccountApi
from services.console.chat import ChatPages
from services.console.chatcalls import ChatCalls
from services.console.confirm import EmailConfirmations
from services.console.conversations import Conversations
from services.console.mail import Mailer, Sender, SmtpMailer
from services.console.owners import EmailTaken, Owners
from services.console.signin import SignInPages
from services.console.signup import SignUpPages
from services.console.site import Site
from services.console.subscription import SubscriptionPages

MIGRATIONS = Path(__file__).parent / "migrations"


class ConsoleService:
    def __init__(self, settings: ConsoleSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.runtime = Runtime("console", settings)
        self.base_url = (settings.console_url or f"http://{settings.host}:{settings.console_port}").rstrip("/")

    async def start(self) -> None:
        settings, runtime = self.settings, self.runtime
        await runtime.connect(MIGRATIONS)
        self.owners = Owners(runtime.db)
        ingress = settings.ingress_url or f"http://{settings.host}:{settings.ingress_port}"
        self.api = AccountApi(ingress, settings.console_secret, self.clock, settings.admin_token)
        await self.api.start()
        gateway = settings.gateway_url or f"http://{settings.host}:{settings.gateway_port}"
        self.chat_calls = ChatCalls(gateway, settings.console_secret, self.clock)
        await self.chat_calls.start()
        conversations = Conversations(runtime.db)
        runtime.reply(rpc.CONSOLE_SIGN_IN_LINK, self.sign_in_link)
        app = web.Application(client_max_size=64 * 1024)
        site = Site(settings, self.owners, self.clock)
        site.install(app)
        mailer: Sender = (
            SmtpMailer(settings.smtp_url, settings.mail_from)
            if settings.smtp_url
            else Mailer(settings.mail_url or f"http://{settings.host}:{settings.simulator_port}")
        )
        confirmations = EmailConfirmations(site, mailer, self.base_url)
        confirmations.routes(app)
        SignInPages(site, confirmations).routes(app)
        SubscriptionPages(site, self.api, conversations).routes(app)
        ChatPages(site, self.api, conversations, self.chat_calls).routes(app)
        SignUpPages(site, self.api, mailer, self.base_url, settings.sign_ups_per_hour).routes(app)
        await runtime.serve(settings.console_port, app)

    async def sign_in_link(self, command: IssueSignInLink) -> SignInLinkIssued:
        email = command.email.strip().lower() if command.email else None
        try:
            secret, expires_at, known = await self.owners.issue_link(command.account_id, email, self.clock.now())
        except EmailTaken as exc:
            raise Refusal("email_taken", "another account's owner has this email", "email") from exc
        url = f"{self.base_url}/sign-in/link/{secret}"
        return SignInLinkIssued(account_id=command.account_id, url=url, expires_at=expires_at, email=known)

    async def stop(self) -> None:
        await self.api.close()
        await self.chat_calls.close()
        await self.runtime.close()
