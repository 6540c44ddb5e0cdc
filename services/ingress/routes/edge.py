"""What every route of ingress shares: its dependencies, who a request's credential is and what
it may do, asking the other services (libs.rpc), publishing to the log, and the query parameters."""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from nats.aio.client import Client

from libs import ownerpass
from libs.clients import client_address, trusted_networks
from libs.clock import Clock
from libs.eventlog.barrier import until_quota_applied
from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.keycache import KeyCache, KeysUnavailable
from libs.pricing.catalog import Catalog
from libs.refusal import Refusal
from libs.rpc import ask
from libs.settings_views import IngressSettings
from libs.web import CONTROL, EARLIEST, LATEST, ApiError
from proto.v1 import (
    QuotaStatus,
    QuotaStatusRequest,
    UsagePosition,
    rpc,
)
from proto.v1.events import Event
from proto.v1.rpc import Rpc
from services.ingress import access, checkout, cursors
from services.ingress.changes import ChangeLimiter
from services.ingress.directory import Directory
from services.ingress.suspensions import Suspensions
from services.ingress.usage import ingest_clients

QUOTA_SYNC_S = 2.0
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class Edge:
    """The dependencies and the helpers every context's routes use (they subclass it; IngressApi
    mixes them into one object)."""

    def __init__(
        self,
        settings: IngressSettings,
        catalog: Catalog,
        directory: Directory,
        publisher: EventPublisher,
        pool: asyncpg.Pool,
        nc: Client,
        keys: KeyCache,
        suspensions: Suspensions,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self._ingest_clients = ingest_clients(settings.ingest_token, settings.ingest_tokens)
        """Metering clients by token, parsed once (app.start has already refused a bad list)."""
        self.catalog = catalog
        self.directory = directory
        self.publisher = publisher
        self.pool = pool
        self.nc = nc
        self.keys = keys
        self.trusted_proxies = trusted_networks(settings.trusted_proxies)
        """Whose X-Forwarded-For names the client (the unknown-key limit counts per client)."""
        self.suspensions = suspensions
        self.clock = clock
        self.changes = ChangeLimiter(pool, settings.account_changes_per_minute)
        self.checkouts: checkout.CheckoutProvider = checkout.LocalCheckoutProvider(
            settings.payment_provider_url or f"http://{settings.host}:{settings.simulator_port}"
        )
        self._barrier_wait_s = {"billing": settings.billing_barrier_wait_s, "refund": settings.refund_barrier_wait_s}
        """How long billing's and refund's commands may wait for their projections, on top of the timeout."""
        self.console_url = (settings.console_url or f"http://{settings.host}:{settings.console_port}").rstrip("/")

    @staticmethod
    def _bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token>", "Authorization")
        return token.strip()

    def _require_token(self, request: web.Request, expected: str) -> None:
        if not secrets.compare_digest(self._bearer(request).encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "wrong token", "Authorization")

    async def _account_of(self, request: web.Request) -> str:
        return (await self._authorized(request)).account_id

    async def _authorized(self, request: web.Request) -> access.Principal:
        """Who an account-API request acts for, once its credential may do what the request's method
        asks (access.authorize) and, for a change, the account has a change left this minute."""
        principal = await self._principal(request)
        access.authorize(principal, request.method)
        if access.needed_scope(request.method) == "manage":
            await self.changes.take(principal.account_id, self.clock.now())
        return principal

    async def _principal(self, request: web.Request) -> access.Principal:
        """Who the request's credential is: an API key, or the console acting for a signed-in owner."""
        token = self._bearer(request)
        if ownerpass.is_owner_pass(token):
            account_id = ownerpass.verify(self.settings.console_secret, token, self.clock.now())
            if account_id is None:
                raise ApiError(401, "invalid_console_pass", "the console's pass is forged or expired", "Authorization")
            return access.of_console(account_id, await self.suspensions.suspended(account_id))
        try:
            client = client_address(request.remote, request.headers.get("X-Forwarded-For"), self.trusted_proxies)
            key = await self.keys.authenticate(self._bearer(request), client)
        except KeysUnavailable as exc:
            raise ApiError(503, "keys_unavailable", "the keys service did not answer; retry") from exc
        if key is None:
            raise ApiError(401, "invalid_api_key", "the API key is malformed, unknown or revoked", "Authorization")
        return access.of_key(key)

    def _account_exists(self, request: web.Request) -> str:
        account_id = request.match_info["account_id"]
        if account_id not in self.directory.accounts:
            raise ApiError(404, "account_not_found", f"no account {account_id!r}", "account_id")
        return account_id

    async def _publish(self, events: Sequence[Event]) -> int:
        """Store the events; the stream sequence of the last one (what the barrier waits for)."""
        try:
            acks = await self.publisher.publish(events)
        except PublishFailed as exc:
            raise ApiError(503, "event_log_unavailable", "the event log did not confirm; retry") from exc
        for event in events:
            self.directory.apply(event)  # read-your-writes; the projection applies it again harmlessly
        return max((ack.seq for ack in acks), default=0)

    async def _ask(self, call: Rpc[Req, Rep], message: Req) -> Rep:
        """Ask another service (libs.rpc.ask): its refusal becomes the 4xx proto maps its code to;
        no answer becomes a 503 "retry" (libs.web answers Unavailable with Retry-After)."""
        timeout = self.settings.request_timeout_s + self._barrier_wait_s.get(call.wait_s or "", 0.0)
        try:
            return await ask(self.nc, call, message, timeout)
        except Refusal as refused:
            raise _http_error(call, refused) from refused

    async def _status(self, account_id: str) -> QuotaStatus:
        return await self._ask(rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=account_id))

    async def _until_quota_applied(self, account_id: str, seq: int) -> None:
        """Answer an admin command once quota has applied the event it stored at `seq` (its
        projection lags by milliseconds), so that the account's next call already meets the new
        account, plan or balance: the sequence barrier (libs/eventlog/barrier.py). Bounded: past
        QUOTA_SYNC_S the events are stored all the same and the answer goes out."""
        await until_quota_applied(
            self.nc, self.settings.stream, seq, account_id, timeout_s=QUOTA_SYNC_S,
            request_timeout_s=self.settings.request_timeout_s,
        )  # fmt: skip


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name}: must be a whole number", name) from exc
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"{name}: must be between {low} and {high}", name)
    return value


def cursor_query(request: web.Request, name: str) -> UsagePosition | None:
    raw = request.query.get(name)
    return None if raw is None else cursors.decode(raw, name)


def filter_query(request: web.Request, name: str, max_length: int) -> str | None:
    """An exact-match filter; empty means none (an HTML form's "all")."""
    raw = request.query.get(name, "")
    if not raw:
        return None
    if len(raw) > max_length or CONTROL.search(raw):
        raise ApiError(400, "invalid_request", f"{name}: at most {max_length} characters, none of them control "
                       "characters", name)  # fmt: skip
    return raw


def time_query(request: web.Request, name: str, default: datetime) -> datetime:
    """An RFC 3339 time or a date (UTC) from the query string."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{name}: not an RFC 3339 time or date: {raw!r}", name) from exc
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:
        raise ApiError(400, "invalid_request", f"{name}: must lie between {EARLIEST.year} and {LATEST.year}", name)
    return value


def _http_error(call: Rpc[Any, Any], refused: Refusal) -> ApiError:
    """A service's refusal as ingress answers it: the status proto maps its code to, and the field
    (or the reason) the client needs to fix or understand it."""
    status = refused.status or 503
    code, field, reason = refused.code, refused.field, refused.reason
    if call.service == "keys":
        field = "key_id" if code in ("key_not_found", "key_revoked", "last_management_key") else None
    elif call.service == "billing" and status == 503:
        code = "billing_unavailable"
    elif call.service == "refund":
        field = "refund_id" if code == "refund_not_found" else None
        reason = reason if status == 409 else None
    return ApiError(status, code, refused.message, field, reason=reason)
