"""Every command and query, declared once: its subject, request, reply, and the refusals it may answer
with instead (their codes, and the HTTP status each maps to at the edge).

A caller sends with `libs.rpc.ask(nc, RPC, message)` and gets the reply, or a `libs.refusal.Refusal`
raised from the refusal reply; a responder serves it with `runtime.reply(RPC, handler)` (libs.rpc).
The AsyncAPI document (proto/asyncapi.json) is generated from `RPCS`: nothing declared here is left
out of it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import msgspec

from proto.v1 import messages as m
from proto.v1 import subjects
from proto.v1.messages import BILLING_STATUS, CONSOLE_STATUS, KEY_STATUS, REFUND_STATUS

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


@dataclass(frozen=True)
class Rpc(Generic[Req, Rep]):
    """One request/reply subject of the contract."""

    subject: str
    request: type[Req]
    reply: Any
    """The answer's type (a Struct or a union of them): what `ask` returns."""
    service: str
    """Who answers: the service (its queue group), named in "<service> did not answer" errors."""
    summary: str
    refusal: type[msgspec.Struct] | None = None
    """The reply a responder sends instead of the answer when it refuses (it carries `code`)."""
    status: Mapping[Any, int] = field(default_factory=dict)
    """Refusal code -> HTTP status at the edge; a code not listed is the service failing (503)."""
    wait_s: Literal["billing", "refund"] | None = None
    """The responder may first wait for its projection (a barrier): the caller waits that much longer."""
    hot: bool = False
    """On the call path of every model call: served on raw nats-py, not faststream (README: why)."""

    def decoder(self) -> "msgspec.json.Decoder[Any]":
        return msgspec.json.Decoder(self.reply if self.refusal is None else self.reply | self.refusal)

    def __hash__(self) -> int:  # the status map is a dict: the subject names the descriptor
        return hash(self.subject)


# -- quota --------------------------------------------------------------------------------------------

QUOTA_CHECK = Rpc[m.QuotaCheck, m.QuotaDecision](
    subjects.QUOTA_CHECK, m.QuotaCheck, m.QuotaDecision, "quota",
    "May this account start a call of this model now (and hold a reservation)?", hot=True,
)  # fmt: skip
QUOTA_CHECK_BATCH = Rpc[m.QuotaCheckBatch, m.QuotaDecisions](
    subjects.QUOTA_CHECK_BATCH, m.QuotaCheckBatch, m.QuotaDecisions, "quota",
    "Several quota.checks of one partition's accounts, decided in order: a gateway's checks that came "
    "while its previous one was answered.", hot=True,
)  # fmt: skip
QUOTA_STATUS = Rpc[m.QuotaStatusRequest, m.QuotaStatus](
    subjects.QUOTA_STATUS, m.QuotaStatusRequest, m.QuotaStatus, "quota",
    "The account's plan, windows, PAYG balance and Extra Usage as quota sees them.",
)  # fmt: skip
QUOTA_EVENTS = Rpc[m.UsageEventsRequest, m.UsageEventsReply](
    subjects.QUOTA_EVENTS, m.UsageEventsRequest, m.UsageEventsReply, "quota",
    "The account's calls, newest first, a page at a time.",
)  # fmt: skip
QUOTA_INFLIGHT = Rpc[m.InflightRequest, m.Inflight](
    subjects.QUOTA_INFLIGHT, m.InflightRequest, m.Inflight, "quota",
    "The account's reservations still held (calls admitted and running).",
)  # fmt: skip

# -- keys ---------------------------------------------------------------------------------------------

KEY_LOOKUP = Rpc[m.LookupKey, m.KeyFound](
    subjects.KEY_LOOKUP, m.LookupKey, m.KeyFound, "keys", "The active key with this hash, if any.", hot=True
)
_KEYS: dict[str, Any] = {"refusal": m.KeyCommandFailed, "status": KEY_STATUS}
KEYS_CREATE = Rpc[m.CreateKey, m.KeyIssued](
    subjects.KEYS_CREATE, m.CreateKey, m.KeyIssued, "keys", "Create a key; its secret travels only here.", **_KEYS
)
KEYS_LIST = Rpc[m.ListKeys, m.KeyList](subjects.KEYS_LIST, m.ListKeys, m.KeyList, "keys", "An account's keys.", **_KEYS)
KEYS_ROTATE = Rpc[m.RotateKey, m.KeyIssued](
    subjects.KEYS_ROTATE, m.RotateKey, m.KeyIssued, "keys", "A new secret for a key; the old one stops.", **_KEYS
)
KEYS_REVOKE = Rpc[m.RevokeKey, m.KeyList](
    subjects.KEYS_REVOKE, m.RevokeKey, m.KeyList, "keys", "The owner revokes one of the account's keys.", **_KEYS
)
KEYS_REVOKE_ANY = Rpc[m.RevokeAnyKey, m.KeyList](
    subjects.KEYS_REVOKE_ANY, m.RevokeAnyKey, m.KeyList, "keys", "The operator revokes any key.", **_KEYS
)
KEYS_SUSPEND = Rpc[m.SuspendAccount, m.AccountAccess](
    subjects.KEYS_SUSPEND, m.SuspendAccount, m.AccountAccess, "keys",
    "Suspend an account's keys, or lift the suspension.", **_KEYS,
)  # fmt: skip
KEYS_ACCESS = Rpc[m.GetAccountAccess, m.AccountAccess](
    subjects.KEYS_ACCESS, m.GetAccountAccess, m.AccountAccess, "keys", "Whether an account is suspended."
)

# -- billing ------------------------------------------------------------------------------------------

_BILLING: dict[str, Any] = {"refusal": m.BillingCommandFailed, "status": BILLING_STATUS}
BILLING_HISTORY = Rpc[m.BillingHistoryRequest, m.BillingHistory](
    subjects.BILLING_HISTORY, m.BillingHistoryRequest, m.BillingHistory, "billing",
    "The account's payments, plan changes, top-ups and refunds, newest first.", **_BILLING,
)  # fmt: skip
BILLING_COSTS = Rpc[m.CostsRequest, m.Costs](
    subjects.BILLING_COSTS, m.CostsRequest, m.Costs, "billing", "Cost analysis by model or day.", **_BILLING
)
BILLING_ABUSE_SIGNALS = Rpc[m.AbuseSignalsRequest, m.AbuseSignals](
    subjects.BILLING_ABUSE_SIGNALS, m.AbuseSignalsRequest, m.AbuseSignals, "billing",
    "The accounts' abuse signals, for the operator.", **_BILLING,
)  # fmt: skip
BILLING_RECORD_PAYMENT = Rpc[m.RecordPayment, m.PaymentAccepted](
    subjects.BILLING_RECORD_PAYMENT, m.RecordPayment, m.PaymentAccepted, "billing",
    "Record a payment: billing decides when its plan takes effect.", wait_s="billing", **_BILLING,
)  # fmt: skip
BILLING_TOP_UP = Rpc[m.TopUpBalance, m.TopUpAccepted](
    subjects.BILLING_TOP_UP, m.TopUpBalance, m.TopUpAccepted, "billing", "Credit the PAYG balance.",
    wait_s="billing", **_BILLING,
)  # fmt: skip

# -- refund -------------------------------------------------------------------------------------------

_REFUND: dict[str, Any] = {"refusal": m.RefundRefused, "status": REFUND_STATUS, "wait_s": "refund"}
REFUND_PREVIEW = Rpc[m.PreviewRefund, m.RefundReply](
    subjects.REFUND_PREVIEW, m.PreviewRefund, m.RefundReply, "refund", "The refund as it stands.", **_REFUND
)
REFUND_REQUEST = Rpc[m.RequestRefund, m.RefundReply](
    subjects.REFUND_REQUEST, m.RequestRefund, m.RefundReply, "refund", "Request the refund.", **_REFUND
)
REFUND_GET = Rpc[m.GetRefund, m.RefundReply](
    subjects.REFUND_GET, m.GetRefund, m.RefundReply, "refund", "One refund of the account.", **_REFUND
)
REFUND_LIST = Rpc[m.ListRefunds, m.RefundReply](
    subjects.REFUND_LIST, m.ListRefunds, m.RefundReply, "refund", "The account's refunds.", **_REFUND
)
REFUND_CANCEL = Rpc[m.CancelRefund, m.RefundReply](
    subjects.REFUND_CANCEL, m.CancelRefund, m.RefundReply, "refund", "Call a processing refund off.", **_REFUND
)
REFUND_PAYOUTS = Rpc[m.ConfigurePayouts, m.PayoutsConfigured](
    subjects.REFUND_PAYOUTS, m.ConfigurePayouts, m.PayoutsConfigured, "refund",
    "Configure the local payment provider (every refund instance answers).", m.RefundRefused, REFUND_STATUS,
)  # fmt: skip

# -- console ------------------------------------------------------------------------------------------

CONSOLE_SIGN_IN_LINK = Rpc[m.IssueSignInLink, m.SignInLinkIssued](
    subjects.CONSOLE_SIGN_IN_LINK, m.IssueSignInLink, m.SignInLinkIssued, "console",
    "A fresh one-time console link for the account's owner.", m.ConsoleCommandFailed, CONSOLE_STATUS,
)  # fmt: skip

# -- operations (per projection: the subject ends with the projection's name) --------------------------


def dlq_retry(projection: str) -> Rpc[m.RetryDeadLetter, m.DeadLetterRetried]:
    return Rpc(f"{subjects.DLQ_RETRY}.{projection}", m.RetryDeadLetter, m.DeadLetterRetried, projection,
               "Apply a dead-lettered event again.")  # fmt: skip


def replay_start(projection: str) -> Rpc[m.StartReplay, m.ReplayProgress]:
    return Rpc(subjects.replay_start(projection), m.StartReplay, m.ReplayProgress, projection,
               "Rebuild the projection from the log, verify, swap.")  # fmt: skip


def replay_status(projection: str) -> Rpc[m.ReplayStatusRequest, m.ReplayProgress]:
    return Rpc(subjects.replay_status(projection), m.ReplayStatusRequest, m.ReplayProgress, projection,
               "The running (or last) replay's progress.")  # fmt: skip


def replay_pause(projection: str) -> Rpc[m.PauseForReplay, m.InstancePaused]:
    return Rpc(subjects.replay_pause(projection), m.PauseForReplay, m.InstancePaused, projection,
               "Scatter-gather from the instance running a replay: every instance pauses its projection.")  # fmt: skip


def replay_resume(projection: str) -> Rpc[m.ResumeAfterReplay, m.InstancePaused]:
    return Rpc(subjects.replay_resume(projection), m.ResumeAfterReplay, m.InstancePaused, projection,
               "Scatter-gather: the replay's pause is over; reload memory if the tables were swapped.")  # fmt: skip


REPLAY_DISCOVER = Rpc[m.ReplayStatusRequest, m.ReplayProgress](
    subjects.REPLAY_DISCOVER, m.ReplayStatusRequest, m.ReplayProgress, "every service with a projection",
    "Scatter-gather: every service that owns a projection answers with its ReplayProgress.",
)  # fmt: skip

RPCS: tuple[Rpc[Any, Any], ...] = tuple(v for v in tuple(globals().values()) if isinstance(v, Rpc))
"""Derived, not listed: a descriptor written above cannot be left out of the documents."""

OPERATIONS = (
    dlq_retry("{projection}"), replay_start("{projection}"), replay_status("{projection}"),
    replay_pause("{projection}"), replay_resume("{projection}"),
)  # fmt: skip
"""The per-projection subjects, with the projection as a parameter (for the AsyncAPI document)."""
