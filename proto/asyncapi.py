"""Generate the AsyncAPI 3.0 document of the wire contract: `python -m proto.asyncapi > proto/asyncapi.json`
(`make schema` writes it with proto/schema.json; a test fails when either drifts).

Every event on its log subject, every command and query (proto/v1/rpc.py) on its subject with its
reply channel, and the messages sent without a reply (broadcasts, quota.release). Derived from
proto, never listed by hand: a new event or a new descriptor appears here by itself.
"""

import json
import sys
from typing import Any

import msgspec

from libs.eventlog.subjects import PUBLISH_PREFIX
from proto.schema import _tagged
from proto.v1 import events, messages, subjects
from proto.v1.rpc import OPERATIONS, RPCS, Rpc

BROADCASTS: tuple[tuple[str, type, str], ...] = (
    (subjects.KEYS_CHANGED, messages.KeysChanged, "keys: a key or an account's suspension changed; caches drop it."),
    (subjects.QUOTA_HEARTBEAT, messages.GatewayHeartbeat, "Each gateway: its calls in flight, for quota."),
    (subjects.QUOTA_RELEASE, messages.ReleaseReservation, "A gateway: an admitted call ended without usage; "
     "quota frees its reservation (no reply)."),
)  # fmt: skip


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _members(reply: Any) -> tuple[type, ...]:
    args = getattr(reply, "__args__", None)
    return tuple(args) if args else (reply,)


def _channel_id(subject: str) -> str:
    return subject.replace("{", "").replace("}", "")


PARTITION = {
    "partition": {
        "description": "The account's partition of the event log (FNV-1a of the "
        "account id modulo the partition count); only its owner listens."
    }
}


def _partitioned(channels: dict[str, Any], operations: dict[str, Any], channel: str, operation: dict[str, Any]) -> None:
    """The same request on `<subject>.p.{partition}`, answered by the owner of the partition."""
    subject = channels[channel]["address"]
    owned = f"{channel}.p.partition"
    forwarded = "" if subject in subjects.OWNER_ONLY else "; any quota instance forwards the plain subject"
    description = (f"{channels[channel]['description']} Sent to the owner of the account's partition (the "
                   f"gateway computes it{forwarded}).")  # fmt: skip
    channels[owned] = {**channels[channel], "address": f"{subject}.p.{{partition}}", "parameters": PARTITION,
                       "description": description}  # fmt: skip
    operations[owned] = {**operation, "channel": {"$ref": f"#/channels/{owned}"}}


def render() -> str:
    event_types = _tagged(events)
    structs: set[type] = set(event_types) | {t for _, t, _ in BROADCASTS}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for event in event_types:
        name = event.__name__
        category = event.category  # type: ignore[attr-defined]
        channels[f"events.{name}"] = {
            "address": f"{PUBLISH_PREFIX}.{category}.{{account_id}}.{name}",
            "title": name,
            "description": (event.__doc__ or name).strip().split("\n\n")[0],
            "parameters": {"account_id": {"description": "The account the event belongs to (its partition key)."}},
            "messages": {name: _ref("messages", name)},
        }
        operations[f"record{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/events.{name}"},
            "summary": f"Stored in the event log (JetStream), Nats-Msg-Id = event_id; category {category}.",
        }

    for subject, message, summary in BROADCASTS:
        channels[subject] = {"address": subject, "description": summary,
                             "messages": {message.__name__: _ref("messages", message.__name__)}}  # fmt: skip
        operations[f"broadcast.{subject}"] = {"action": "send", "channel": {"$ref": f"#/channels/{subject}"}}
        if subject in subjects.PARTITIONED:
            _partitioned(channels, operations, subject, operations[f"broadcast.{subject}"])

    calls: list[Rpc[Any, Any]] = [*RPCS, *OPERATIONS]
    for call in calls:
        channel = _channel_id(call.subject)
        replies = (*_members(call.reply), *(() if call.refusal is None else (call.refusal,)))
        structs.update((call.request, *replies))
        request = call.request.__name__
        channels[channel] = {
            "address": call.subject,
            "description": call.summary,
            "messages": {request: _ref("messages", request)},
        }
        if "{projection}" in call.subject:
            channels[channel]["parameters"] = {"projection": {"description": "The projection's name."}}
        channels[f"{channel}.reply"] = {
            "address": None,  # the requester's inbox
            "description": f"The answer to {call.subject}" + (" (or its refusal)" if call.refusal else ""),
            "messages": {t.__name__: _ref("messages", t.__name__) for t in replies},
        }
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": call.summary,
            "description": f"Answered by {call.service}"
            + (" on raw nats-py (a hot path)" if call.hot else " (faststream, libs.rpc)"),
            "reply": {
                "address": {"location": "$message.header#/reply_to"},
                "channel": {"$ref": f"#/channels/{channel}.reply"},
            },
        }
        if call.status:
            operation["x-refusal-codes"] = dict(call.status)
        operations[channel] = operation
        if call.subject in subjects.PARTITIONED:
            _partitioned(channels, operations, channel, operation)
        if call.subject in subjects.OWNER_ONLY:  # nobody answers the plain subject
            del channels[channel], operations[channel]

    ordered = sorted(structs, key=lambda t: t.__name__)
    _, schemas = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "flowplan wire contract",
            "version": "1",
            "description": "Events in the JetStream log, commands and queries over NATS request/reply, and "
            "broadcasts. Generated from proto/ by proto/asyncapi.py; the JSON Schema of every message is "
            "also in proto/schema.json.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {t.__name__: {"name": t.__name__, "payload": _ref("schemas", t.__name__)} for t in ordered},
            "schemas": schemas,
        },
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
