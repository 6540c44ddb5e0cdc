"""Version 1 of the wire contract. Add fields with defaults; a breaking change is a new package."""

from proto.v1.events import (
    AccountCreated,
    AccountEvent,
    Event,
    FlowRateChanged,
    KeyCreated,
    MultiplierChanged,
    PaymentRecorded,
    PlanChanged,
    UsageRecorded,
    decode_event,
    encode,
)
from proto.v1.messages import (
    QuotaCheck,
    QuotaDecision,
    QuotaStatus,
    QuotaStatusRequest,
    UsageEventsReply,
    UsageEventsRequest,
    WindowStatus,
)

__all__ = [
    "AccountCreated",
    "AccountEvent",
    "Event",
    "FlowRateChanged",
    "KeyCreated",
    "MultiplierChanged",
    "PaymentRecorded",
    "PlanChanged",
    "QuotaCheck",
    "QuotaDecision",
    "QuotaStatus",
    "QuotaStatusRequest",
    "UsageEventsReply",
    "UsageEventsRequest",
    "UsageRecorded",
    "WindowStatus",
    "decode_event",
    "encode",
]
