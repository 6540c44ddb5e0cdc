"""Generate the JSON Schema of the wire contract: `python -m proto.schema > proto/schema.json`."""

import json
import sys

import msgspec

from proto.v1 import events, messages

CONTRACT: tuple[type, ...] = (
    events.AccountCreated,
    events.KeyCreated,
    events.KeyRotated,
    events.KeyRevoked,
    events.PaymentRecorded,
    events.BalanceToppedUp,
    events.ExtraUsageChanged,
    events.PlanChanged,
    events.MultiplierChanged,
    events.FlowRateChanged,
    events.UsageRecorded,
    messages.QuotaCheck,
    messages.QuotaDecision,
    messages.ReleaseReservation,
    messages.QuotaStatusRequest,
    messages.QuotaStatus,
    messages.UsageEventsRequest,
    messages.UsageEventsReply,
    messages.LookupKey,
    messages.KeyFound,
    messages.CreateKey,
    messages.RotateKey,
    messages.RevokeKey,
    messages.ListKeys,
    messages.KeyIssued,
    messages.KeyList,
    messages.KeyCommandFailed,
    messages.KeysChanged,
    messages.BillingHistoryRequest,
    messages.BillingHistory,
    messages.CostsRequest,
    messages.Costs,
    messages.RetryDeadLetter,
    messages.DeadLetterRetried,
)


def render() -> str:
    schemas, components = msgspec.json.schema_components(CONTRACT, ref_template="#/$defs/{name}")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://flowplan.dev/proto/v1/schema.json",
        "title": "flowplan wire contract v1",
        "oneOf": list(schemas),
        "$defs": components,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
