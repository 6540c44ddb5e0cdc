"""Retrying a dead letter: the projection that dead-lettered an event applies it again, on request.

`flowplan dlq retry` sends RetryDeadLetter to `dlq.retry.<projection>`, which only the
service that owns that projection answers. Every instance of the service hears it: a projection
split over instances by partition (libs/eventlog/partitioned.py, quota's partitions) is written
by one instance per partition, fenced by its lease, so the instance that projects the dead
letter's partition applies it and the others answer `elsewhere` (libs/ops/dlq.py waits for the
one that applies). That instance reads the dead letter from the dead-letter stream, applies
its event through the projection's own apply() in one transaction (the runner serialises it
with the partition's batches), and only after that commit deletes the dead letter, so it is
not retried again.

Why a request to the owner rather than republishing the event into the log with a marker
header: the log is the source of truth and holds each event once. A second copy would be
read by every other projection (each would have to recognise and skip it), would be
replayed twice by every rebuild, and inside the duplicate window JetStream would drop it
anyway (same Nats-Msg-Id). Here no other projection ever sees the retry.

A retry that fails leaves the dead letter where it is and says why. If the delete after a
successful apply is lost, a second retry changes nothing: projections dedupe by event id.
The event is applied after newer events of its account, as any late event is.
"""

import logging

import msgspec
import nats.errors
import nats.js

from libs.eventlog import subjects
from libs.eventlog.projection import Applied
from libs.eventlog.runner import ProjectionRunner
from libs.fencing import Fenced
from libs.rpc import Replier
from proto.v1 import DeadLetterRetried, RetryDeadLetter, decode_event, rpc

log = logging.getLogger(__name__)


class DeadLetterRetrier:
    def __init__(self, runner: ProjectionRunner, js: nats.js.JetStreamContext, dlq_stream: str) -> None:
        self._runner = runner
        self._js = js
        self._dlq_stream = dlq_stream

    def serve(self, responders: Replier) -> None:
        name = self._runner.projection.name

        async def on_retry(request: RetryDeadLetter) -> DeadLetterRetried:
            return await self.retry(request.dlq_seq)

        def undecodable(error: str) -> DeadLetterRetried:
            return DeadLetterRetried(dlq_seq=0, applied=False, error=f"bad request: {error}")

        responders.reply(rpc.dlq_retry(name), on_retry, queue=None, undecodable=undecodable)

    async def retry(self, dlq_seq: int) -> DeadLetterRetried:
        name = self._runner.projection.name

        def failed(error: str) -> DeadLetterRetried:
            return DeadLetterRetried(dlq_seq=dlq_seq, applied=False, error=error)

        try:
            letter = await self._js.get_msg(self._dlq_stream, dlq_seq)
        except nats.js.errors.NotFoundError:
            return failed(f"no dead letter {dlq_seq} in {self._dlq_stream} (already retried?)")
        headers = letter.headers or {}
        owner = headers.get("Flowplan-Projection")
        if owner != name:
            return failed(f"dead letter {dlq_seq} belongs to projection {owner}, not {name}")
        try:
            event = decode_event(letter.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return failed(f"its payload is not a valid event ({exc}); no retry can apply it")
        item = Applied(int(headers["Flowplan-Stream-Seq"]), event)
        partition = subjects.partition_of(headers["Flowplan-Subject"])
        elsewhere = DeadLetterRetried(dlq_seq=dlq_seq, applied=False, elsewhere=True,
                                      error=f"{name} p{partition} is not projected by this instance")  # fmt: skip
        if not self._runner.projects(partition):
            return elsewhere
        try:
            await self._runner.reapply(partition, item)
        except Fenced:  # its lease moved on since (the next owner stamped its fence): the next owner's
            return elsewhere
        except Exception as exc:  # the cause is not fixed yet: say so, keep the dead letter
            log.warning("%s: retry of dead letter %d failed: %r", name, dlq_seq, exc)
            return failed(repr(exc)[:1000])
        try:
            await self._js.delete_msg(self._dlq_stream, dlq_seq)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("%s: dead letter %d applied but not deleted: %r", name, dlq_seq, exc)
        log.info("%s: dead letter %d (event seq %d) applied", name, dlq_seq, item.seq)
        return DeadLetterRetried(dlq_seq=dlq_seq, applied=True)
