"""`flowplan dlq list|retry`: the dead-letter stream, read through the headers the projection
runner writes, and retried by asking the owning projection (libs/eventlog/deadletters.py)."""

import asyncio
from collections.abc import Sequence
from datetime import datetime

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs import tracing
from libs.eventlog import subjects
from libs.inbox import NO_RESPONDERS
from libs.ops import OpsError, connected
from libs.ops.logreader import Stored, read
from libs.settings import Settings
from proto.v1 import DeadLetterRetried, RetryDeadLetter, encode, rpc


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
    """Every instance of the projection's service hears the retry; the one that projects the letter's
    partition applies it, the others answer `elsewhere` at once. So: the first answer not from
    elsewhere, or why there was none within timeout_s."""
    retry = rpc.dlq_retry(letter.projection)
    answers: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=answers.put)
    elsewhere = 0
    try:
        request = encode(RetryDeadLetter(dlq_seq=letter.dlq_seq))
        await nc.publish(retry.subject, request, reply=inbox, headers=tracing.nats_headers())
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await answers.get()
                if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                    error = f"no service with the {letter.projection} projection is running to apply it"
                    break
                answer = msgspec.json.decode(msg.data, type=DeadLetterRetried)
                if not answer.elsewhere:
                    return answer
                elsewhere += 1
    except TimeoutError:
        if elsewhere:
            error = (f"none of the {elsewhere} instances of the {letter.projection} projection that answered "
                     "projects its partition now (a hand-over or a replay under way?): retry")  # fmt: skip
        else:
            error = f"the {letter.projection} projection did not answer within {timeout_s:g}s"
    finally:
        await sub.unsubscribe()
    return DeadLetterRetried(dlq_seq=letter.dlq_seq, applied=False, error=error)
