"""`flowplan dlq list|retry`: the dead-letter stream, read through the headers the projection
runner writes, and retried by asking the owning projection (libs/eventlog/deadletters.py)."""

from collections.abc import Sequence
from datetime import datetime

import msgspec
import nats.errors
from nats.aio.client import Client

from libs.eventlog import subjects
from libs.ops import OpsError, connected
from libs.ops.logreader import Stored, read
from libs.rpc import Unavailable, ask
from libs.settings import Settings
from proto.v1 import DeadLetterRetried, RetryDeadLetter, rpc


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    dlq_seq: int
    dead_lettered_at: datetime
    projection: str
    event_seq: int
    """The event's sequence in the event log."""
    event_type: str
    account: str
    error: str


def _dead_letter(stored: Stored) -> DeadLetter:
    headers = stored.headers
    subject = headers.get("Flowplan-Subject", "")
    tokens = subject.split(".")  # flowplan.p.<partition>.<category>.<account>.<Type>
    return DeadLetter(
        dlq_seq=stored.seq,
        dead_lettered_at=stored.stored_at,
        projection=headers.get("Flowplan-Projection", stored.subject.rsplit(".", 1)[-1]),
        event_seq=int(headers.get("Flowplan-Stream-Seq", 0)),
        event_type=tokens[-1] if len(tokens) == 6 else "?",
        account=tokens[4] if len(tokens) == 6 else "?",
        error=headers.get("Flowplan-Error", ""),
    )


async def _list(nc: Client, settings: Settings, projection: str | None) -> list[DeadLetter]:
    if projection is not None and not subjects.ACCOUNT_TOKEN.match(projection):
        raise OpsError(f"--projection {projection!r}: not a projection name")
    subject = subjects.dlq_subject(projection) if projection else f"{subjects.DLQ_PREFIX}.>"
    return [_dead_letter(stored) async for stored in read(nc.jetstream(), settings.dlq_stream, [subject])]


async def list_dead_letters(settings: Settings, projection: str | None = None) -> list[DeadLetter]:
    async with connected(settings) as nc:
        return await _list(nc, settings, projection)


async def retry(
    settings: Settings, seqs: Sequence[int], projection: str | None, everything: bool, timeout_s: float
) -> list[DeadLetterRetried]:
    """Ask each chosen dead letter's projection to apply it again, oldest first; one answer each."""
    if sum((bool(seqs), projection is not None, everything)) != 1:
        raise OpsError("say which dead letters to retry: --seq N (repeatable), --projection NAME or --all")
    async with connected(settings) as nc:
        letters = await _list(nc, settings, projection)
        if seqs:
            wanted = set(seqs)
            letters = [letter for letter in letters if letter.dlq_seq in wanted]
            missing = wanted - {letter.dlq_seq for letter in letters}
            if missing:
                raise OpsError(f"--seq: no dead letter {', '.join(map(str, sorted(missing)))} in {settings.dlq_stream}")
        return [await _ask(nc, letter, timeout_s) for letter in letters]


async def _ask(nc: Client, letter: DeadLetter, timeout_s: float) -> DeadLetterRetried:
    try:
        return await ask(nc, rpc.dlq_retry(letter.projection), RetryDeadLetter(dlq_seq=letter.dlq_seq), timeout_s)
    except Unavailable as exc:
        if isinstance(exc.__cause__, nats.errors.NoRespondersError):
            error = f"no service with the {letter.projection} projection is running to apply it"
        else:
            error = f"the {letter.projection} projection did not answer within {timeout_s:g}s"
    return DeadLetterRetried(dlq_seq=letter.dlq_seq, applied=False, error=error)
