"""The gateway's quota.checks coalesced per partition (services/gateway/quotachecks.py), against a
real nats-server and a scripted owner: alone when nothing is out, together while one is; each
caller gets its own decision, in the order the checks came; whatever fails a message fails each
of its checks; a caller that gave up is left out; a traced check's context travels with it."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.eventlog.subjects import partition_for, partitioned
from libs.inbox import Requests
from proto.v1 import QuotaCheck, QuotaCheckBatch, QuotaDecision, QuotaDecisions, encode, subjects
from services.gateway.quotachecks import QuotaChecks, QuotaUnavailable

pytestmark = pytest.mark.connected
PARTITIONS = 4
ACCOUNT = "acct_batch"
PARTITION = partition_for(ACCOUNT, PARTITIONS)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def checked(n: int) -> QuotaCheck:
    return QuotaCheck(account_id=ACCOUNT, reservation_id=f"r{n}", model="deepseek/deepseek-chat")


def decided(check: QuotaCheck) -> QuotaDecision:
    """The scripted owner's answer names the check it answers."""
    return QuotaDecision(admitted=True, billing_mode="subscription", reason=check.reservation_id)


class Owner:
    """Answers the partition's quota.check and quota.check_batch after `hold`, and records what came."""

    def __init__(self, nc: Client, hold: asyncio.Event | None = None) -> None:
        self.nc, self.hold = nc, hold
        self.alone: list[str] = []
        self.batches: list[list[str]] = []
        self.traceparents: list[list[str | None]] = []
        self.headers: list[dict[str, str] | None] = []

    async def start(self, batch: bool = True, answer_batch: bool = True) -> None:
        await self.nc.subscribe(partitioned(subjects.QUOTA_CHECK, PARTITION), cb=self.on_check)
        if batch:
            await self.nc.subscribe(partitioned(subjects.QUOTA_CHECK_BATCH, PARTITION), cb=self.on_batch(answer_batch))
        await self.nc.flush()

    async def on_check(self, msg: Msg) -> None:
        check = msgspec.json.decode(msg.data, type=QuotaCheck)
        self.alone.append(check.reservation_id)
        self.headers.append(msg.headers)
        if self.hold is not None:
            await self.hold.wait()
        await msg.respond(encode(decided(check)))

    def on_batch(self, answer: bool) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            batch = msgspec.json.decode(msg.data, type=QuotaCheckBatch)
            self.batches.append([c.reservation_id for c in batch.checks])
            self.traceparents.append(list(batch.traceparents))
            if answer:
                await msg.respond(encode(QuotaDecisions(decisions=[decided(c) for c in batch.checks])))

        return handle


async def started(nc: Client, timeout_s: float = 2.0) -> QuotaChecks:
    requests = Requests(nc)
    await requests.start()
    return QuotaChecks(requests, PARTITIONS, timeout_s)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never came")


async def one_out(
    nc: Client, timeout_s: float = 2.0, headers: dict[str, str] | None = None, **start: bool
) -> tuple[asyncio.Event, Owner, QuotaChecks, "asyncio.Task[QuotaDecision]"]:
    """A check (r0) sent alone and held by the owner until `hold` is set: the partition's slot is
    taken, and the checks that come meanwhile wait for it. `start`: Owner.start's options."""
    hold = asyncio.Event()
    owner = Owner(nc, hold)
    await owner.start(**start)
    checks = await started(nc, timeout_s)
    first = asyncio.create_task(checks.decide(checked(0), headers))
    await until(lambda: owner.alone == ["r0"])
    return hold, owner, checks, first


async def test_one_check_at_a_time_goes_alone_on_quota_check(nc: Client) -> None:
    owner = Owner(nc)
    await owner.start()
    checks = await started(nc)
    for n in range(5):
        assert (await checks.decide(checked(n))).reason == f"r{n}"
    assert owner.alone == [f"r{n}" for n in range(5)] and owner.batches == []


async def test_checks_that_come_while_one_is_out_go_together_in_order_each_to_its_caller(nc: Client) -> None:
    hold, owner, checks, first = await one_out(nc)
    rest = [asyncio.create_task(checks.decide(checked(n))) for n in range(1, 21)]
    await asyncio.sleep(0.05)
    assert owner.batches == []  # nothing more is sent while the first is out
    hold.set()
    decisions = await asyncio.gather(first, *rest)
    assert [d.reason for d in decisions] == [f"r{n}" for n in range(21)]
    assert owner.batches == [[f"r{n}" for n in range(1, 21)]] and owner.traceparents == [[]]


async def test_a_batch_that_finds_nobody_fails_each_of_its_checks(nc: Client) -> None:
    hold, _, checks, first = await one_out(nc, batch=False)  # no responders for the batch
    rest = [asyncio.create_task(checks.decide(checked(n))) for n in range(1, 6)]
    await asyncio.sleep(0.02)
    hold.set()
    assert (await first).reason == "r0"
    for waiting in rest:
        with pytest.raises(QuotaUnavailable):
            await waiting
    assert checks._lanes[PARTITION].out == 0 and checks._lanes[PARTITION].waiting == []
    assert (await checks.decide(checked(9))).reason == "r9"  # the next goes as before


async def test_a_batch_left_unanswered_times_out_for_each_of_its_checks(nc: Client) -> None:
    hold, owner, checks, first = await one_out(nc, 0.3, answer_batch=False)
    rest = [asyncio.create_task(checks.decide(checked(n))) for n in range(1, 4)]
    await asyncio.sleep(0.02)
    hold.set()
    await first
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert [type(r) for r in results] == [QuotaUnavailable] * 3
    assert owner.batches == [["r1", "r2", "r3"]]


async def test_a_check_waiting_behind_an_unanswered_one_gets_its_503_within_its_own_timeout(nc: Client) -> None:
    hold, owner, checks, first = await one_out(nc, 2.0, answer_batch=False)  # hold set only at the end
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.5)  # they ask later than the first: its slot is free while they still wait
    began = loop.time()
    waiting = [asyncio.create_task(checks.decide(checked(n))) for n in (1, 2)]
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    waited = loop.time() - began
    assert [type(r) for r in results] == [QuotaUnavailable] * 3
    # One timeout from when they asked (2 s), not the rest of the first's and then their batch's (3.5 s).
    assert waited < 2.75, waited
    assert owner.batches == [["r1", "r2"]]  # sent once the slot was free, with what time its callers had left
    await until(lambda: checks._lanes[PARTITION].out == 0)  # and no longer waited for than they waited
    hold.set()


async def test_a_caller_that_gave_up_while_waiting_is_left_out_of_the_batch(nc: Client) -> None:
    hold, owner, checks, first = await one_out(nc)
    rest = {n: asyncio.create_task(checks.decide(checked(n))) for n in range(1, 5)}
    await asyncio.sleep(0.02)
    rest[2].cancel()
    hold.set()
    await first
    assert [(await rest[n]).reason for n in (1, 3, 4)] == ["r1", "r3", "r4"]
    assert owner.batches == [["r1", "r3", "r4"]]  # nothing is reserved for the one that left


async def test_each_traced_check_carries_its_own_trace_context_in_a_batch(nc: Client) -> None:
    hold, owner, checks, first = await one_out(nc, headers={"traceparent": TRACEPARENT})
    other = TRACEPARENT.replace("b7ad", "c8be")
    rest = [
        asyncio.create_task(checks.decide(checked(1), {"traceparent": other})),
        asyncio.create_task(checks.decide(checked(2))),
    ]
    await asyncio.sleep(0.02)
    hold.set()
    await asyncio.gather(first, *rest)
    assert owner.headers[0] == {"traceparent": TRACEPARENT}  # alone: in the message's headers, as before
    assert owner.traceparents == [[other, None]]


async def test_each_partition_has_its_own_slot(nc: Client) -> None:
    hold, _, checks, first = await one_out(nc)
    other_account = next(a for a in (f"acct_{uuid.uuid4().hex[:6]}" for _ in range(100))
                         if partition_for(a, PARTITIONS) != PARTITION)  # fmt: skip
    seen: list[str] = []

    async def answer(msg: Msg) -> None:
        check = msgspec.json.decode(msg.data, type=QuotaCheck)
        seen.append(check.account_id)
        await msg.respond(encode(decided(check)))

    await nc.subscribe(partitioned(subjects.QUOTA_CHECK, partition_for(other_account, PARTITIONS)), cb=answer)
    elsewhere = QuotaCheck(account_id=other_account, reservation_id="x", model="deepseek/deepseek-chat")
    assert (await asyncio.wait_for(checks.decide(elsewhere), 2)).reason == "x"  # not held behind r0
    hold.set()
    await first
    assert seen == [other_account]
