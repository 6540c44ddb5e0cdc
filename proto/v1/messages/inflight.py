"""The calls in flight: quota.inflight and the gateways' heartbeats (GatewayHeartbeat)."""

from datetime import datetime

import msgspec

from proto.v1.events import BillingMode


class InflightRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Which of the account's admitted calls are still running (their reservations)?"""

    account_id: str


class Inflight(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    reservation_ids: list[str]
    """Reservations held now (subscription and PAYG), not yet released by usage or timed out."""


class InflightCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call a gateway admitted and has not finished: what quota needs to hold its reservation."""

    account_id: str
    reservation_id: str
    billing_mode: BillingMode
    """The mode quota admitted it in: subscription (reserves Flows) or payg (reserves balance)."""
    estimated_usd_micros: int
    """The estimate the gateway asked quota.check with."""
    admitted_at: datetime


class GatewayHeartbeat(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Broadcast by every gateway every `heartbeat_interval_s`: the calls it runs now (a large list
    comes in several messages of one beat). Quota keeps a reservation alive while a heartbeat lists
    it, and rebuilds its reservations and rate limits from these after a restart."""

    gateway_id: str
    sent_at: datetime
    calls: list[InflightCall]
    rate_tats: dict[str, datetime] = {}
    """Per account, the latest RPM state (GCRA theoretical arrival time) quota's answers showed
    this gateway, while still in the future."""
