"""Request/reply messages: commands are imperative, replies are answers."""

from datetime import datetime

import msgspec

from proto.v1.events import BillingMode, PlanId, UsageRecorded


class QuotaCheck(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """May this account start a call now? Holds a reservation when admitted."""

    account_id: str
    reservation_id: str
    model: str
    estimated_flows_micros: int
    billing_mode: BillingMode = "subscription"


class QuotaDecision(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    admitted: bool
    billing_mode: BillingMode | None
    reason: str | None = None
    """Why not admitted: quota_exhausted, unknown_account."""
    plan: PlanId | None = None
    flows_remaining_micros: int = 0
    """Room left in the 5-hour window after this call's reservation."""
    window_resets_at: datetime | None = None
    retry_after_s: int | None = None


class QuotaStatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class WindowStatus(msgspec.Struct, frozen=True, kw_only=True):
    used_flows_micros: int
    limit_flows_micros: int
    reserved_flows_micros: int
    started_at: datetime | None
    resets_at: datetime | None

    @property
    def remaining_flows_micros(self) -> int:
        return max(0, self.limit_flows_micros - self.used_flows_micros)


class QuotaStatus(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    known: bool
    plan: PlanId
    window_5h: WindowStatus
    weekly: WindowStatus
    monthly: WindowStatus


class UsageEventsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    limit: int = 50


class UsageEventsReply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    events: list[UsageRecorded]
