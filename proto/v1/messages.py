"""Request/reply messages: commands are imperative, replies are answers."""

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from proto.v1.events import BillingMode, KeyKind, PlanId, UsageRecorded

Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
"""A name, reference or id a command carries into the log or a query: no control characters
(Postgres refuses NUL in text; none belongs in a name). Refused when the message is decoded."""

KeyRefusalCode = Literal["key_not_found", "key_revoked", "key_limit_reached", "last_management_key",
                         "invalid_request", "internal_error"]  # fmt: skip
BillingRefusalCode = Literal["invalid_request", "ref_conflict", "unavailable", "internal_error"]
RefundRefusalCode = Literal["not_refundable", "not_cancellable", "refund_not_found", "invalid_request",
                            "not_supported", "unavailable", "internal_error"]  # fmt: skip
ConsoleRefusalCode = Literal["email_taken", "invalid_request", "internal_error"]
"""The codes each refusal reply may carry; below, the HTTP status each one means at ingress.
internal_error: the responder failed unexpectedly (libs.rpc answers so rather than not at all);
unavailable: nothing was done, retry."""

# proto/v1/rpc.py names these maps in its descriptors; libs.rpc.refusal_of reads them.

KEY_STATUS: Mapping[KeyRefusalCode, int] = {
    "key_not_found": 404, "key_revoked": 409, "key_limit_reached": 409, "last_management_key": 409,
    "invalid_request": 400, "internal_error": 500,
}  # fmt: skip
BILLING_STATUS: Mapping[BillingRefusalCode, int] = {
    "invalid_request": 400, "ref_conflict": 409, "unavailable": 503, "internal_error": 500,
}  # fmt: skip
REFUND_STATUS: Mapping[RefundRefusalCode, int] = {
    "not_refundable": 409, "not_cancellable": 409, "refund_not_found": 404, "invalid_request": 400,
    "not_supported": 409, "unavailable": 503, "internal_error": 500,
}  # fmt: skip
CONSOLE_STATUS: Mapping[ConsoleRefusalCode, int] = {"email_taken": 409, "invalid_request": 400, "internal_error": 500}


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
    """The PAYG balance: the ledger's sum (top-ups less PAYG usage), micro-USD."""
    payg_reserved_micros: int = 0
    """Estimates of PAYG calls admitted and still running."""
    insider: bool = False
    """Marked an insider by the operator, and not ended by a lapse to Free."""
    multiplier: str = "1"
    """The multiplier that prices the account's calls now (fraction text): libs.pricing.multipliers."""


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


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed: never the secret."""

    id: str
    account_id: str
    name: str
    kind: KeyKind
    prefix: str
    last4: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    account_suspended: bool = False
    """The key's account is suspended (AccountSuspended): its keys are refused with 403."""


class LookupKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    key_hash: str


class KeyFound(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    key: KeyView | None
    """None when no active key has this hash."""


class CreateKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    name: Text
    kind: KeyKind


class RotateKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    key_id: Text


class RevokeKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    key_id: Text


class ListKeys(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RevokeAnyKey(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The operator revokes a key of any account (admin API); answered with a KeyList of it."""

    key_id: str


class SuspendAccount(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Suspend (suspended=True) or lift the suspension of an account's keys; answered with AccountAccess."""

    account_id: str
    suspended: bool
    reason: str = ""


class GetAccountAccess(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Is this account suspended? Answered with AccountAccess (changed=False): ingress asks it for
    the console's owner, whose pass, unlike a key, does not come back from key.lookup with it."""

    account_id: str


class AccountAccess(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    suspended: bool
    changed: bool
    """False when the account already was in that state (nothing recorded)."""
    since: datetime | None = None
    """When the current state began (None: never suspended)."""


class KeyIssued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The answer to CreateKey and RotateKey: the only time a secret travels."""

    key: KeyView
    secret: str


class KeyList(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    keys: list[KeyView]


class KeyCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: KeyRefusalCode
    message: str


class KeysChanged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Broadcast on `keys.changed` once a key was created, rotated or revoked: caches drop these."""

    key_hashes: list[str]
    account_ids: list[str] = []
    """Accounts whose suspension changed: caches of GetAccountAccess drop these."""


class BillingHistoryRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    limit: int = 100


class BillingEntry(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    kind: str
    """payment, plan_change, top_up, refund."""
    occurred_at: datetime
    amount_micros: int = 0
    plan: str | None = None
    previous_plan: str | None = None
    reference: str | None = None


class BillingHistory(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    entries: list[BillingEntry]
    balance_micros: int = 0
    """The PAYG ledger's sum."""


class CostsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    group_by: str
    """model, day, or hour (the subscription's Flows per UTC hour)."""
    since: datetime
    until: datetime


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    """The model id, the UTC day (YYYY-MM-DD), or the UTC hour (RFC 3339)."""
    calls: int
    flows_micros: int
    usd_micros: int


class Costs(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    lines: list[CostLine]


class AbuseSignalsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    min_score: int = 1
    limit: int = 100


class AbuseSignal(msgspec.Struct, frozen=True, kw_only=True):
    """One signal of an account and the evidence behind it, for the operator to judge."""

    kind: str
    """shared_client_address, around_the_clock, keys_across_clients or identical_usage."""
    score: int
    summary: str
    first_seen: datetime
    last_seen: datetime
    count: int
    """Calls (or days, for around_the_clock) behind the signal."""
    accounts: list[str] = []
    """The other accounts it links this one to."""
    details: dict[str, str | list[str]] = {}


class AccountAbuse(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    score: int
    signals: list[AbuseSignal]


class AbuseSignals(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    accounts: list[AccountAbuse]


class RecordPayment(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Record a successful payment (what a payment provider's webhook delivers): it pays one
    month of a plan and starts or changes the subscription. billing decides when it takes effect."""

    account_id: str
    plan: PlanId
    amount_micros: int
    payment_ref: Text
    """The provider's reference: a payment sent again with the same one is recorded once."""
    paid_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    """When it was paid (with its UTC offset); None: now, by billing's clock."""
    override: bool = False
    """An amount other than the plan's price is recorded only when this says so (a back-office
    correction: a discount, a partial payment); otherwise it is refused, naming amount_usd."""


class PaymentAccepted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    payment_ref: str
    plan: PlanId
    previous_plan: PlanId
    amount_micros: int
    paid_at: datetime
    effective_at: datetime
    """When the plan takes effect: at once, or for a downgrade when the month already paid for ends."""
    paid_until: datetime
    duplicate: bool = False
    """The payment_ref was recorded before: this is that payment, nothing new was recorded."""


class TopUpBalance(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Credit the account's pay-as-you-go balance."""

    account_id: str
    amount_micros: int
    topup_ref: Text | None = None
    """Makes a top-up sent again the same one; None: a new top-up each time."""


class TopUpAccepted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    topup_ref: str
    amount_micros: int
    topped_up_at: datetime
    duplicate: bool = False
    """The topup_ref was recorded before: this is that top-up, nothing new was credited."""


class BillingCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: BillingRefusalCode
    """invalid_request (field names what), ref_conflict (the payment_ref or topup_ref was recorded
    with another plan or amount), unavailable (nothing was recorded; retry)."""
    message: str
    field: str | None = None


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


class RefundQuote(msgspec.Struct, frozen=True, kw_only=True):
    """The refund of the account's latest payment, line by line as it stands (micro-USD)."""

    eligible: bool
    reason: str | None = None
    """Why not: no_payment, free_plan, window_passed, usage_exceeds_payment, nothing_to_refund,
    already_refunded, refund_in_progress."""
    payment_ref: str | None = None
    plan: PlanId | None = None
    paid_at: datetime | None = None
    refundable_until: datetime | None = None
    paid_micros: int = 0
    usage_micros: int = 0
    refunded_before_micros: int = 0
    refundable_micros: int = 0
    fee_micros: int = 0
    amount_micros: int = 0
    pending_calls: int = 0
    """Calls admitted and still running: their usage will count too."""


class RefundView(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    account_id: str
    payment_ref: str
    plan: PlanId
    status: str
    """processing, succeeded, failed, cancelled."""
    requested_at: datetime
    updated_at: datetime
    paid_micros: int
    usage_micros: int
    refunded_before_micros: int
    fee_micros: int
    amount_micros: int
    reason: str | None = None
    payout_id: str | None = None


class PreviewRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RequestRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class GetRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    refund_id: Text


class CancelRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Call a processing refund off, if its payout has not started."""

    account_id: str
    refund_id: Text


class ListRefunds(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RefundReply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    refund: RefundView | None = None
    quote: RefundQuote | None = None
    refunds: list[RefundView] = []


class RefundRefused(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: RefundRefusalCode
    reason: str
    message: str


class ConfigurePayouts(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Tell the local payment provider to decline payouts (tests and demos) or to pay again."""

    fail_payouts: bool


class PayoutsConfigured(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    provider: str
    fail_payouts: bool


class RetryDeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Apply the event in this dead letter again (sent to the projection that dead-lettered it)."""

    dlq_seq: int


class DeadLetterRetried(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    dlq_seq: int
    applied: bool
    """True: applied and removed from the dead-letter stream. False: it stays there; see error."""
    error: str | None = None


class StartReplay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Rebuild a projection from the event log into a fresh schema, optionally compare it with the
    live one, and swap it in. With differences found it is swapped only when swap_if_different."""

    from_seq: int = 1
    verify: bool = False
    swap_if_different: bool = False
    keep_old: bool = False
    """Keep the replaced tables in a schema <schema>_old_<time> instead of dropping them."""


class ReplayStatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    pass


class TableDifference(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    live_rows: int
    rebuilt_rows: int
    first_keys: list[str]
    """The first primary keys (in key order) whose rows differ, each saying how."""


ReplayPhase = Literal["idle", "rebuilding", "catching_up", "verifying", "swapping", "done", "failed"]


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    projection: str
    phase: ReplayPhase
    read: int = 0
    """Events read from the log so far."""
    total: int = 0
    """Events to read, as far as known (the log keeps growing while live traffic goes on)."""
    seconds: float = 0.0
    """Since the replay started."""
    rebuild_seconds: float = 0.0
    verify_seconds: float = 0.0
    paused_ms: float = 0.0
    """How long the live projection stood still (catch-up to the same checkpoints, swap, reload)."""
    skipped: int = 0
    """Events that could not be applied (the live projection dead-lettered them too)."""
    verified: bool = False
    differences: list[TableDifference] = []
    swapped: bool = False
    kept_schema: str | None = None
    error: str | None = None


class IssueSignInLink(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Give the account's owner a fresh one-time console link (24 h, single use); with an email,
    the owner's email becomes that one (it is how they sign in afterwards)."""

    account_id: str
    email: str | None = None


class SignInLinkIssued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    url: str
    expires_at: datetime
    email: str | None = None


class ConsoleCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: ConsoleRefusalCode
    message: str
    field: str | None = None
