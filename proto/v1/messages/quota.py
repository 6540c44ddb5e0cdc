"""quota's queries and the gateway's admission: check, release, status, the account's calls."""

from datetime import datetime

import msgspec

from proto.v1.events import BillingMode, PlanId, UsageRecorded


class QuotaCheck(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """May this account start a call of this model now? Checks the plan's models, the RPM
    limit and the windows, and holds a reservation of the estimate when admitted."""

    account_id: str
    reservation_id: str
    model: str
    estimated_flows_micros: int = 0
    estimated_usd_micros: int = 0
    """An estimate in USD, converted to Flows at the account's rate and multiplier (wins when > 0)."""
    billing_mode: BillingMode = "subscription"


class ReleaseReservation(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An admitted call ended without usage to report (the upstream failed): free its room now."""

    account_id: str
    reservation_id: str


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    limit: int
    remaining: int
    reset_s: float
    """Seconds until the limit is fully replenished."""


class QuotaDecision(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    admitted: bool
    billing_mode: BillingMode | None
    reason: str | None = None
    """Why not admitted: model_not_in_plan, unknown_model, rate_limit_exceeded, quota_exhausted,
    insufficient_balance, unknown_account, not_ready (quota is rebuilding its in-flight state after a
    start: retry after retry_after_s)."""
    plan: PlanId | None = None
    flows_remaining_micros: int = 0
    """Room left in the 5-hour window after this call's reservation."""
    window_resets_at: datetime | None = None
    retry_after_s: int | None = None
    rate_limit: RateLimit | None = None
    usd_per_flow: str = ""
    """The Flow rate in force now (fraction text), to price the call's usage with."""
    multiplier: str = ""
    """The account's multiplier in force now (fraction text)."""


class QuotaCheckBatch(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Several checks of one partition's accounts, decided in order as one quota.check each: a
    gateway sends the checks that came while its previous one was answered together."""

    checks: list[QuotaCheck]
    traceparents: list[str | None] = msgspec.field(default_factory=list)
    """Each check's W3C traceparent (None: not traced), in the checks' order; empty when none is."""


class QuotaDecisions(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A QuotaCheckBatch's answer: one decision per check, in the checks' order."""

    decisions: list[QuotaDecision]


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
    extra_usage: bool = False
    payg_key_id: str | None = None
    balance_micros: int = 0
    """The PAYG balance: quota.ledger's sum (top-ups less PAYG usage), micro-USD. quota owns it (it
    admits PAYG calls against it); billing's history reads it from here."""
    payg_reserved_micros: int = 0
    """Estimates of PAYG calls admitted and still running."""
    insider: bool = False
    """Marked an insider by the operator, and not ended by a lapse to Free."""
    multiplier: str = "1"
    """The multiplier that prices the account's calls now (fraction text): libs.pricing.multipliers."""
    applied: dict[int, int] = msgspec.field(default_factory=dict)
    """The last stream sequence quota's projection applied per partition, all shown in this reply:
    a caller that published an event waits until its partition passes it (libs/eventlog/barrier.py)."""


class UsagePosition(msgspec.Struct, frozen=True, kw_only=True):
    """Where a call sits in an account's calls, newest first: by time, then by stored event id."""

    occurred_at: datetime
    event_id: str


class UsageEventsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An account's calls, newest first: `limit` of them, older than `before` or newer than `after`
    (at most one of the two), of one key, one model, one Studio Chat conversation and one billing
    mode when given."""

    account_id: str
    limit: int = 50
    before: UsagePosition | None = None
    after: UsagePosition | None = None
    key_id: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    billing_mode: str | None = None
    """subscription or payg."""


class UsageEventsReply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    events: list[UsageRecorded]
    """Newest first, whichever way the request paged."""
    more: bool = False
    """More calls lie beyond these in the direction asked (older for `before` or none, newer for `after`)."""
