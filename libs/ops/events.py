"""`flowplan events tail|export|import`: the event log as JSON Lines.

One line per stored event: `{"seq", "subject", "stored_at", "event"}`, where `event` is
the event's JSON exactly as stored (its bytes, not a re-encoding) and the rest is where
and when the log stored it. A stored payload that is not JSON at all (poison) is written
as `{"seq", "subject", "stored_at", "unreadable": "<text>"}` so the file stays JSON Lines;
import refuses such a line. Import reads only `event`: the subject follows from the event
and the log gives it a new sequence.
"""

import typing
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import NamedTuple

import msgspec
import nats.js

from libs.eventlog import subjects
from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.eventlog.streams import require_streams
from libs.ops import OpsError, connected
from libs.ops.logreader import Stored, last_seq, read, seq_at, start_of_last
from libs.settings import Settings
from proto.v1 import decode_event
from proto.v1.events import AnyEvent

CATEGORY_OF: dict[str, str] = {cls.__name__: cls.category for cls in typing.get_args(AnyEvent)}
"""Event type -> its subject category, for a server-side filter by type."""


class Selection(NamedTuple):
    """Which events a command reads. Bounds are inclusive below, exclusive above, except the
    sequence range (both inclusive)."""

    accounts: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    from_seq: int | None = None
    to_seq: int | None = None
    stored_since: datetime | None = None
    stored_until: datetime | None = None
    """Stream time: when the log stored the event."""
    occurred_since: datetime | None = None
    occurred_until: datetime | None = None
    """Event time: the event's own `occurred_at` (a backfill may be stored long after it)."""

    @property
    def by_event_time(self) -> bool:
        return self.occurred_since is not None or self.occurred_until is not None


NO_EVENT = msgspec.Raw(b"")
"""A line without an event (msgspec cannot decode `Raw | None`)."""


class Line(msgspec.Struct, kw_only=True, omit_defaults=True):
    seq: int | None = None
    subject: str | None = None
    stored_at: datetime | None = None
    event: msgspec.Raw = NO_EVENT
    unreadable: str | None = None


class _EventTime(msgspec.Struct):
    occurred_at: datetime


_line = msgspec.json.Decoder(Line)
_event_time = msgspec.json.Decoder(_EventTime)


def event_subjects(selection: Selection) -> list[str]:
    """The stored-subject filters for the selection's accounts and types (every pair of them)."""
    for account in selection.accounts:
        if not subjects.ACCOUNT_TOKEN.match(account):
            raise OpsError(f"--account {account!r}: not an account id (letters, digits, '_' and '-')")
    for event_type in selection.types:
        if event_type not in CATEGORY_OF:
            raise OpsError(f"--type {event_type!r}: not an event type; one of {', '.join(sorted(CATEGORY_OF))}")
    return [
        f"{subjects.STORED_PREFIX}.*.{CATEGORY_OF.get(event_type, '*')}.{account}.{event_type}"
        for account in selection.accounts or ("*",)
        for event_type in selection.types or ("*",)
    ]


def to_line(stored: Stored) -> Line:
    event: msgspec.Raw = NO_EVENT
    unreadable: str | None = None
    try:
        event = msgspec.json.decode(stored.data, type=msgspec.Raw)
    except msgspec.DecodeError:
        unreadable = stored.data.decode(errors="replace")
    return Line(seq=stored.seq, subject=stored.subject, stored_at=stored.stored_at, event=event, unreadable=unreadable)


def line(stored: Stored) -> bytes:
    return msgspec.json.encode(to_line(stored))


def _occurred_in(selection: Selection, data: bytes) -> bool:
    try:
        when = _event_time.decode(data).occurred_at
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False  # no event time to compare: not selected by one
    return (selection.occurred_since is None or when >= selection.occurred_since) and (
        selection.occurred_until is None or when < selection.occurred_until
    )


async def _seq_range(js: nats.js.JetStreamContext, stream: str, selection: Selection) -> tuple[int, int]:
    """The selection's sequence range, with its stream-time bounds turned into sequences."""
    end = await last_seq(js, stream)
    first = 1 if selection.from_seq is None else selection.from_seq
    last = end if selection.to_seq is None else min(selection.to_seq, end)
    if selection.stored_since is not None:
        since = await seq_at(js, stream, selection.stored_since)
        first = max(first, end + 1 if since is None else since)
    if selection.stored_until is not None:
        until = await seq_at(js, stream, selection.stored_until)
        last = min(last, end if until is None else until - 1)
    return first, last


async def _matching(
    js: nats.js.JetStreamContext, stream: str, selection: Selection, first: int, last: int | None, follow: bool
) -> AsyncIterator[Stored]:
    async for stored in read(js, stream, event_subjects(selection), first=first, last=last, follow=follow):
        if selection.stored_until is not None and stored.stored_at >= selection.stored_until:
            return  # only reached when following: stream time only grows
        if not selection.by_event_time or _occurred_in(selection, stored.data):
            yield stored


async def last_events(
    js: nats.js.JetStreamContext, stream: str, selection: Selection, n: int
) -> tuple[list[Stored], int]:
    """The last n matching events, and the sequence to follow on from."""
    first, last = await _seq_range(js, stream, selection)
    if n <= 0:
        return [], max(first, last + 1)
    if not selection.by_event_time and first <= last:
        # Every filter is a subject or a sequence: the server counts, and the read starts late.
        first = await start_of_last(js, stream, event_subjects(selection), n, first, last)
    recent: deque[Stored] = deque(maxlen=n)
    async for stored in _matching(js, stream, selection, first, last, follow=False):
        recent.append(stored)
    return list(recent), max(first, last + 1)


async def tail(settings: Settings, selection: Selection, n: int, follow: bool, out: Callable[[bytes], None]) -> None:
    """The last n matching events; when following, then every new one until cancelled."""
    async with connected(settings) as nc:
        js = nc.jetstream()
        recent, after = await last_events(js, settings.stream, selection, n)
        for stored in recent:
            out(line(stored))
        if follow:
            async for stored in _matching(js, settings.stream, selection, after, selection.to_seq, follow=True):
                out(line(stored))


async def export(settings: Settings, selection: Selection, out: Callable[[bytes], None]) -> int:
    """Write every matching event stored so far; returns how many."""
    count = 0
    async with connected(settings) as nc:
        js = nc.jetstream()
        first, last = await _seq_range(js, settings.stream, selection)
        async for stored in _matching(js, settings.stream, selection, first, last, follow=False):
            out(line(stored))
            count += 1
    return count


def parse(lines: Iterable[bytes]) -> list[AnyEvent]:
    """Every line's event, checked with the wire contract's own decoder; the first bad line
    fails the whole file, naming its number and what is wrong."""
    events: list[AnyEvent] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            entry = _line.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise OpsError(f"line {number}: not an export line: {exc}") from exc
        if not entry.event:
            what = "a payload that was not JSON when exported" if entry.unreadable is not None else "no `event`"
            raise OpsError(f"line {number}: {what}; nothing was imported")
        try:
            events.append(decode_event(bytes(entry.event)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise OpsError(f"line {number}: not a valid event: {exc}; nothing was imported") from exc
    return events


async def import_events(settings: Settings, lines: Iterable[bytes]) -> tuple[int, int]:
    """Publish the file's events through the normal publisher (Nats-Msg-Id = event id).
    Returns (stored, duplicates): a re-import within the dedupe window stores nothing new."""
    events = parse(lines)
    async with connected(settings) as nc:
        try:
            await require_streams(nc.jetstream(), settings)
        except RuntimeError as exc:
            raise OpsError(str(exc)) from exc
        publisher = EventPublisher(nc, settings.stream)
        await publisher.start()
        try:
            acks = await publisher.publish(events)
        except PublishFailed as exc:
            raise OpsError(str(exc)) from exc
    duplicates = sum(ack.duplicate for ack in acks)
    return len(acks) - duplicates, duplicates
