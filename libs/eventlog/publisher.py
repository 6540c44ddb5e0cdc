"""Publish events to the log: Nats-Msg-Id is the event id, many publishes in flight, bounded."""

import asyncio
from collections.abc import Sequence

import nats.js
from nats.js import api

from libs.eventlog import subjects
from proto.v1 import encode
from proto.v1.events import Event


class PublishFailed(Exception):
    """JetStream did not confirm storing every event; the caller must not report success."""


class EventPublisher:
    def __init__(self, js: nats.js.JetStreamContext, stream: str, timeout_s: float = 5.0) -> None:
        self._js = js
        self._stream = stream
        self._timeout_s = timeout_s

    async def publish(self, events: Sequence[Event]) -> list[api.PubAck]:
        """Return once JetStream has stored every event (or knew it already: ack.duplicate)."""
        if not events:
            return []
        try:
            futures = [
                await self._js.publish_async(
                    subjects.publish_subject(event.subject_account, type(event).__name__),
                    encode(event),
                    headers={api.Header.MSG_ID: event.event_id},
                    wait_stall=self._timeout_s,
                )
                for event in events
            ]
            return list(await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s))
        except (TimeoutError, nats.errors.Error) as exc:
            raise PublishFailed(f"event log did not store the batch: {exc!r}") from exc
