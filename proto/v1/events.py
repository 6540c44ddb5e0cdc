"""Events: facts in the log, past tense, frozen. The `type` tag names the struct.

Money is integer micro-USD, Flows integer micro-Flows. Exact rates (USD per Flow,
multipliers) travel as fraction strings such as "5/198" so that pricing replays
bit-for-bit.
"""

from datetime import datetime
from typing import ClassVar, Literal

import msgspec

BillingMode = Literal["subscription", "payg"]
PlanId = str
KeyKind = Literal["subscription", "payg", "management"]
"""subscription and payg are model keys (call models, read the account); management keys change it."""

SYSTEM_ACCOUNT = "_system"
"""The account token in the subject of events that belong to no account (Flow rate)."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    category: ClassVar[str] = "account"
    """Subject category: "usage" for the high-volume usage events, "account" for the rest."""

    event_id: str
    occurred_at: datetime
    """Event time: when it happened in the world, not when it was recorded."""

    @property
    def subject_account(self) -> str:
        return SYSTEM_ACCOUNT


class AccountEvent(Event, frozen=True, kw_only=True):
    account_id: str

    @property
    def subject_account(self) -> str:
        return self.account_id


class AccountCreated(AccountEvent, frozen=True, kw_only=True):
    name: str
    multiplier: str = "1"


class KeyCreated(AccountEvent, frozen=True, kw_only=True):
    key_id: str
    name: str
    kind: KeyKind
    key_hash: str
    """SHA-256 of the secret, hex. The secret itself never enters the log."""
    prefix: str
    last4: str


class KeyRotated(AccountEvent, frozen=True, kw_only=True):
    """The key has a new secret from occurred_at on; the old one stops working."""

    key_id: str
    key_hash: str
    previous_key_hash: str
    last4: str


class KeyRevoked(AccountEvent, frozen=True, kw_only=True):
    key_id: str
    key_hash: str


class AccountSuspended(AccountEvent, frozen=True, kw_only=True):
    """The operator suspended the account: from occurred_at on its keys are refused (403
    account_suspended) by the gateway and the account API, until an AccountUnsuspended."""

    reason: str = ""


class AccountUnsuspended(AccountEvent, frozen=True, kw_only=True):
    """The operator lifted the account's suspension: its active keys work again."""

    reason: str = ""


class PaymentRecorded(AccountEvent, frozen=True, kw_only=True):
    """A successful payment for a plan; occurred_at is when it was paid."""

    payment_ref: str
    plan: PlanId
    amount_micros: int


class PlanChanged(AccountEvent, frozen=True, kw_only=True):
    """The account's plan from occurred_at on. Monthly periods count from period_anchor."""

    plan: PlanId
    previous_plan: PlanId
    period_anchor: datetime
    reason: Literal["payment", "refund", "period_end", "admin"]
    paid_until: datetime | None = None
    """End of the paid period: past it, without a renewal, the account is on Free."""
    payment_ref: str | None = None
    """The payment that bought this change (reason "payment"): a refund of it knows its period."""


class PlanChangeCancelled(AccountEvent, frozen=True, kw_only=True):
    """A plan change that had not taken effect yet is withdrawn (its payment was refunded): the plan
    in force before it runs on as if it had never been scheduled."""

    plan_change_id: str
    """The event_id of the PlanChanged withdrawn."""
    reason: Literal["refund"] = "refund"


class BalanceToppedUp(AccountEvent, frozen=True, kw_only=True):
    """Pay-as-you-go money credited to the account's balance."""

    amount_micros: int
    topup_ref: str


class ExtraUsageChanged(AccountEvent, frozen=True, kw_only=True):
    """Extra Usage on or off: when on, calls past a cap bill the PAYG balance instead of waiting."""

    enabled: bool
    payg_key_id: str | None = None


class MultiplierChanged(AccountEvent, frozen=True, kw_only=True):
    """Per-account value multiplier in force from occurred_at on."""

    multiplier: str


class InsiderStatusSet(AccountEvent, frozen=True, kw_only=True):
    """The operator marked the account an insider (or took the mark off) from occurred_at on.
    While marked, and unless an explicit multiplier wins, its calls are priced with the plans
    file's insider_multiplier."""

    insider: bool


class InsiderStatusEnded(AccountEvent, frozen=True, kw_only=True):
    """The insider's paid subscription lapsed to Free at occurred_at: insider status is over for
    good (a later payment does not bring it back). Decided by billing, once per mark: its id is
    derived from the InsiderStatusSet it ends."""

    reason: Literal["lapsed_to_free"] = "lapsed_to_free"
    insider_status_id: str
    """The event_id of the InsiderStatusSet this ends."""


class FlowRateChanged(Event, frozen=True, kw_only=True):
    """USD per Flow in force from occurred_at on, for every account."""

    usd_per_flow: str


class UsageRecorded(AccountEvent, frozen=True, kw_only=True):
    """One metered call, priced when it was recorded at the rate in force at occurred_at."""

    category: ClassVar[str] = "usage"

    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    images: int = 0
    billing_mode: BillingMode
    key_id: str | None = None
    usd_cost_micros: int
    flows_micros: int
    usd_per_flow: str
    multiplier: str
    reservation_id: str | None = None
    """The quota reservation this call held, released when this event is applied."""
    source: Literal["ingress", "gateway"] = "ingress"
    client_hash: str | None = None
    """The gateway's keyed hash (HMAC) of the calling client's address; never the address itself."""
    agent_hash: str | None = None
    """The gateway's keyed hash of the call's User-Agent."""
    conversation_id: str | None = None
    """The Studio Chat conversation the call came from (the console's id); None for API calls."""


class RefundRequested(AccountEvent, frozen=True, kw_only=True):
    """A refund of the payment was asked for and accepted for processing (status processing).

    The amount is settled later, once the usage recorded before the request is all counted:
    usage events up to stream sequence cutoff_seq, and the usage of the calls that were in
    flight at the request (their quota reservations)."""

    refund_id: str
    payment_ref: str
    plan: PlanId
    """The plan the refunded payment paid for."""
    paid_at: datetime
    paid_micros: int
    cutoff_seq: int
    pending_reservations: list[str] = []
    usage_micros: int
    refunded_before_micros: int
    fee_micros: int
    amount_micros: int
    """The lines as they stood at the request (a quote); RefundSucceeded has the settled ones."""


class RefundPayoutStarted(AccountEvent, frozen=True, kw_only=True):
    """The payout of the refund is being made: from now on it can no longer be cancelled."""

    refund_id: str


class RefundPaidOut(AccountEvent, frozen=True, kw_only=True):
    """The payment provider paid money back (recorded by the local provider; a real one
    reports it by webhook). One per idempotency key, however often the payout is asked for."""

    payout_id: str
    idempotency_key: str
    refund_id: str
    amount_micros: int
    provider: str


class RefundSucceeded(AccountEvent, frozen=True, kw_only=True):
    """The refund was paid out; the account is on Free from occurred_at on (a PlanChanged follows), or,
    when the refunded payment's plan had not started yet, that change is withdrawn (a PlanChangeCancelled
    follows) and the plan in force runs on."""

    refund_id: str
    payout_id: str
    usage_micros: int
    refunded_before_micros: int
    fee_micros: int
    amount_micros: int


class RefundFailed(AccountEvent, frozen=True, kw_only=True):
    """The payout failed; nothing changed and the refund may be asked for again."""

    refund_id: str
    reason: str


class RefundCancelled(AccountEvent, frozen=True, kw_only=True):
    """The refund was called off before its payout started: by the user (reason "cancelled_by_user"),
    or because the usage of the calls in flight used the payment up."""

    refund_id: str
    reason: str
    usage_micros: int = 0


AnyEvent = (
    AccountCreated
    | KeyCreated
    | KeyRotated
    | KeyRevoked
    | AccountSuspended
    | AccountUnsuspended
    | PaymentRecorded
    | BalanceToppedUp
    | ExtraUsageChanged
    | PlanChanged
    | PlanChangeCancelled
    | MultiplierChanged
    | InsiderStatusSet
    | InsiderStatusEnded
    | FlowRateChanged
    | UsageRecorded
    | RefundRequested
    | RefundPayoutStarted
    | RefundPaidOut
    | RefundSucceeded
    | RefundFailed
    | RefundCancelled
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_event(data: bytes) -> AnyEvent:
    """Decode any event; raises msgspec.DecodeError/ValidationError on a bad payload."""
    event: AnyEvent = _decoder.decode(data)
    return event
