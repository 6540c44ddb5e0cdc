"""The per-call detail's cursors (GET /v1/account/usage/events?before=|after=): opaque to clients.

A cursor names one call's place among the account's calls, newest first: its time to the
microsecond and its stored event id (quota orders by both; two calls may share a time). It is
base64url of `[microseconds since the epoch, event id]`, so that clients treat it as a token and
never build one; it carries no account, since quota bounds the query by the caller's account
anyway. Anything that does not decode to that shape is a 400 naming the parameter.
"""

import base64
import binascii
from datetime import UTC, datetime, timedelta

import msgspec

from libs.web import CONTROL, EARLIEST, LATEST, ApiError
from proto.v1 import UsagePosition, UsageRecorded

MAX_CURSOR_CHARS = 1024
MAX_EVENT_ID_CHARS = 512
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_shape = msgspec.json.Decoder(tuple[int, str])


def encode(position: UsagePosition) -> str:
    micros = (position.occurred_at - _EPOCH) // timedelta(microseconds=1)
    raw = msgspec.json.encode((micros, position.event_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def of_call(call: UsageRecorded) -> str:
    return encode(UsagePosition(occurred_at=call.occurred_at, event_id=call.event_id))


def decode(value: str, field: str) -> UsagePosition:
    """The position a cursor this API gave names, or a 400 naming `field`."""
    bad = ApiError(400, "invalid_request", f"{field}: not a cursor this API gave (use next_cursor or prev_cursor)",
                   field)  # fmt: skip
    if not value or len(value) > MAX_CURSOR_CHARS:
        raise bad
    try:
        micros, event_id = _shape.decode(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        occurred_at = _EPOCH + timedelta(microseconds=micros)
    except (binascii.Error, ValueError, msgspec.DecodeError, OverflowError) as exc:
        raise bad from exc
    # Postgres refuses NUL in text: a control character must not get as far as quota's query.
    if not 0 < len(event_id) <= MAX_EVENT_ID_CHARS or CONTROL.search(event_id) or not EARLIEST <= occurred_at < LATEST:
        raise bad
    return UsagePosition(occurred_at=occurred_at, event_id=event_id)
