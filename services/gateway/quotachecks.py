"""The gateway's quota.checks, sent to the account's partition owner and coalesced under load.

Per partition at most `in_flight` check messages are out at a time. A check that finds the limit
reached waits, and the checks waiting go together, as one quota.check_batch, the moment a reply
frees the slot: Nagle's algorithm without its delay. No timer is armed and nothing waits when the
slot is free, so at one connection each check goes alone at once on quota.check, as before; at
many, one message each way carries several checks, and quota, nats-server and the gateway each
handle one message where they handled several (docs/performance.md, task qbatch).

quota decides a batch's checks in order, each as if it came alone (services/quota/responder.py).
Whatever fails a message (no responders, a timeout, an unreadable reply) fails each of its checks
with QuotaUnavailable, which the pipeline answers 503 as it did a failed request. Each check has
`timeout_s` from the moment its caller asked, waiting for a slot included, as a check sent alone
has: a quota that stopped answering costs a waiting caller one timeout, not the message ahead's
and then its own. A waiting caller that is cancelled before its batch is sent is left out of it:
nothing is reserved for it."""

import asyncio
import logging
from dataclasses import dataclass, field

import msgspec

from libs import tracing
from libs.eventlog.subjects import partition_for, partitioned
from libs.inbox import Requests
from proto.v1 import QuotaCheck, QuotaCheckBatch, QuotaDecision, QuotaDecisions, encode, subjects
from services.gateway import metrics

log = logging.getLogger(__name__)
MAX_BATCH = 64
"""Checks in one message at most (about 13 kB): more waiting go in the next."""


class QuotaUnavailable(Exception):
    """quota did not answer this check: no responders, a timeout, or a reply that cannot be read."""


@dataclass(slots=True)
class _Waiting:
    check: QuotaCheck
    headers: dict[str, str] | None
    decided: "asyncio.Future[QuotaDecision]"
    expires_at: float
    """The loop's time when its caller stops waiting: its message waits for a reply no longer."""


@dataclass(slots=True)
class _Lane:
    """One partition's checks: how many messages are out, and the checks waiting for a slot."""

    out: int = 0
    waiting: list[_Waiting] = field(default_factory=list)


class QuotaChecks:
    def __init__(self, requests: Requests, partitions: int, timeout_s: float, in_flight: int = 1) -> None:
        self._requests, self._partitions, self._timeout_s = requests, partitions, timeout_s
        self._in_flight = in_flight
        self._lanes: dict[int, _Lane] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._decision = msgspec.json.Decoder(QuotaDecision)
        self._decisions = msgspec.json.Decoder(QuotaDecisions)

    async def decide(self, check: QuotaCheck, headers: dict[str, str] | None = None) -> QuotaDecision:
        """The owner's decision; QuotaUnavailable when it did not come. `headers`: the caller's
        trace context (tracing.nats_headers), carried per check in a batch."""
        partition = partition_for(check.account_id, self._partitions)
        lane = self._lanes.get(partition)
        if lane is None:
            lane = self._lanes[partition] = _Lane()
        if lane.out < self._in_flight:
            lane.out += 1
            try:
                return await self._alone(partition, check, headers, self._timeout_s)
            finally:
                lane.out -= 1
                self._send_waiting(partition, lane)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(check, headers, loop.create_future(), loop.time() + self._timeout_s)
        lane.waiting.append(waiting)
        expiry = loop.call_at(waiting.expires_at, _expire, waiting.decided)
        try:
            return await waiting.decided
        finally:
            expiry.cancel()

    async def _alone(
        self, partition: int, check: QuotaCheck, headers: dict[str, str] | None, timeout_s: float
    ) -> QuotaDecision:
        metrics.quota_check_batch.record(1)
        subject = partitioned(subjects.QUOTA_CHECK, partition)
        try:
            reply = await self._requests.request(subject, encode(check), timeout_s, headers)
            return self._decision.decode(reply.data)
        except Exception as exc:
            raise QuotaUnavailable(repr(exc)) from exc

    def _send_waiting(self, partition: int, lane: _Lane) -> None:
        """Into each free slot, the checks waiting (those whose callers still wait), as one message."""
        while lane.waiting and lane.out < self._in_flight:
            batch = [w for w in lane.waiting[:MAX_BATCH] if not w.decided.done()]
            del lane.waiting[:MAX_BATCH]
            if batch:
                lane.out += 1
                task = asyncio.create_task(self._send(partition, lane, batch))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, partition: int, lane: _Lane, batch: list[_Waiting]) -> None:
        # No longer than its last caller waits: a reply after that decides nothing, and the slot is free.
        timeout_s = max(0.001, max(w.expires_at for w in batch) - asyncio.get_running_loop().time())
        try:
            if len(batch) == 1:
                decisions = [await self._alone(partition, batch[0].check, batch[0].headers, timeout_s)]
            else:
                decisions = await self._together(partition, batch, timeout_s)
        except QuotaUnavailable as exc:
            for waiting in batch:
                if not waiting.decided.done():
                    waiting.decided.set_exception(QuotaUnavailable(*exc.args))
        else:
            for waiting, decision in zip(batch, decisions, strict=True):
                if not waiting.decided.done():
                    waiting.decided.set_result(decision)
        finally:
            for waiting in batch:  # cancelled (the gateway stopping): none is left waiting for good
                if not waiting.decided.done():
                    waiting.decided.set_exception(QuotaUnavailable("the check was not sent"))
            lane.out -= 1
            self._send_waiting(partition, lane)

    async def _together(self, partition: int, batch: list[_Waiting], timeout_s: float) -> list[QuotaDecision]:
        metrics.quota_check_batch.record(len(batch))
        traceparents = [w.headers.get(tracing.TRACEPARENT) if w.headers else None for w in batch]
        message = QuotaCheckBatch(
            checks=[w.check for w in batch], traceparents=traceparents if any(traceparents) else []
        )
        subject = partitioned(subjects.QUOTA_CHECK_BATCH, partition)
        try:
            reply = await self._requests.request(subject, encode(message), timeout_s)
            decisions = self._decisions.decode(reply.data).decisions
        except Exception as exc:
            raise QuotaUnavailable(repr(exc)) from exc
        if len(decisions) != len(batch):
            raise QuotaUnavailable(f"{len(decisions)} decisions for {len(batch)} checks")
        return decisions


def _expire(decided: "asyncio.Future[QuotaDecision]") -> None:
    """A waiting check's time is up (its message may be out: quota lets what it reserved go once
    no heartbeat lists it, as for a check sent alone that timed out)."""
    if not decided.done():
        decided.set_exception(QuotaUnavailable("no decision within the check's timeout"))
