"""libs.rpc against a real nats-server (no services): the faststream responder and ask() over the
wire, what a caller sees when nobody answers, and that answering logs nothing per request at INFO."""

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.localservers import LocalNats
from libs.refusal import Refusal
from libs.rpc import Responders, Unavailable, ask
from proto.v1 import BillingHistory, BillingHistoryRequest, ReplayProgress, ReplayStatusRequest, encode, rpc

pytestmark = pytest.mark.connected


@pytest.fixture
async def billing(nats_server: LocalNats) -> AsyncIterator[Responders]:
    responders = Responders("billing", nats_server.url)

    async def history(request: BillingHistoryRequest) -> BillingHistory:
        if request.limit > 1000:
            raise Refusal("invalid_request", "limit: at most 1000", "limit")
        await asyncio.sleep(0.2 if request.account_id == "slow" else 0)
        return BillingHistory(entries=[], balance_micros=request.limit)

    responders.reply(rpc.BILLING_HISTORY, history, max_workers=4)
    await responders.start()
    yield responders
    await responders.stop()


async def test_ask_gets_the_typed_reply_or_raises_the_refusal_with_its_http_status(
    nc: Client, billing: Responders
) -> None:
    answer = await ask(nc, rpc.BILLING_HISTORY, BillingHistoryRequest(account_id="acc_1", limit=7))
    assert answer == BillingHistory(entries=[], balance_micros=7)
    with pytest.raises(Refusal) as refused:
        await ask(nc, rpc.BILLING_HISTORY, BillingHistoryRequest(account_id="acc_1", limit=5000))
    assert (refused.value.code, refused.value.field, refused.value.status) == ("invalid_request", "limit", 400)
    raw = await nc.request(rpc.BILLING_HISTORY.subject, b'{"type": "BillingHistoryRequest"}', timeout=2)
    assert b'"invalid_request"' in raw.data and b"account_id" in raw.data


async def test_slow_requests_are_answered_side_by_side(nc: Client, billing: Responders) -> None:
    started = asyncio.get_running_loop().time()
    slow = [ask(nc, rpc.BILLING_HISTORY, BillingHistoryRequest(account_id="slow")) for _ in range(4)]
    await asyncio.gather(*slow)
    assert asyncio.get_running_loop().time() - started < 0.7  # four 0.2 s waits at once, not one after another


async def test_nobody_answering_is_unavailable_naming_the_service(nc: Client) -> None:
    with pytest.raises(Unavailable) as nobody:
        await ask(nc, rpc.BILLING_COSTS, rpc.BILLING_COSTS.request(account_id="a", group_by="day",
                  since="2026-01-01T00:00:00Z", until="2026-01-02T00:00:00Z"))  # type: ignore[arg-type]  # fmt: skip
    assert nobody.value.service == "billing" and "billing" in str(nobody.value)

    async def hear(_: Msg) -> None:  # hears, never answers
        pass

    silent = await nc.subscribe(rpc.QUOTA_STATUS.subject, cb=hear)
    with pytest.raises(Unavailable):
        await ask(nc, rpc.QUOTA_STATUS, rpc.QUOTA_STATUS.request(account_id="a"), 0.2)
    await silent.unsubscribe()


async def test_every_instance_answers_a_scatter_gather_subject(nats_server: LocalNats, nc: Client) -> None:
    instances = [Responders(f"svc{i}", nats_server.url) for i in range(2)]
    for i, responders in enumerate(instances):

        async def progress(_: ReplayStatusRequest, name: str = f"p{i}") -> ReplayProgress:
            return ReplayProgress(projection=name, phase="idle")

        responders.reply(rpc.REPLAY_DISCOVER, progress, queue=None)
        await responders.start()

    async def gathered() -> list[bytes]:
        """The answers to one scatter-gather request within half a second."""
        heard: list[bytes] = []

        async def collect(msg: Msg) -> None:
            heard.append(msg.data)

        sub = await nc.subscribe(inbox := nc.new_inbox(), cb=collect)
        await nc.publish(rpc.REPLAY_DISCOVER.subject, encode(ReplayStatusRequest()), reply=inbox)
        for _ in range(25):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        await sub.unsubscribe()
        return heard

    heard = await gathered()  # right after start: test_a_request_right_after_start_finds_its_responders
    for responders in instances:
        await responders.stop()
    assert sorted(heard) == sorted(encode(ReplayProgress(projection=f"p{i}", phase="idle")) for i in range(2))


async def test_a_request_right_after_start_finds_its_responders(nats_server: LocalNats, nc: Client) -> None:
    """start() returns once the server has the subscriptions. Before, its flush's PING overtook the
    SUBs still queued in nats-py (libs.connections.subscribed): 3-7% of starts on the shared 2 cores,
    17% with two busy loops added, had requests answered "no responders": 300 starts fail without it."""

    async def history(request: BillingHistoryRequest) -> BillingHistory:
        return BillingHistory(entries=[], balance_micros=request.limit)

    body = encode(BillingHistoryRequest(account_id="acc_1", limit=3))
    failed: list[BaseException] = []
    for _ in range(300):
        responders = Responders("billing", nats_server.url)
        responders.reply(rpc.BILLING_HISTORY, history, max_workers=4)
        await responders.start()
        asked = (nc.request(rpc.BILLING_HISTORY.subject, body, timeout=5) for _ in range(4))
        answers = await asyncio.gather(*asked, return_exceptions=True)
        await responders.stop()
        failed += [answer for answer in answers if isinstance(answer, BaseException)]
    assert failed == []


async def test_answering_logs_nothing_per_request_at_info(
    nc: Client, billing: Responders, caplog: pytest.LogCaptureFixture
) -> None:
    """faststream would log two lines (received, processed) per command or query at INFO."""
    with caplog.at_level(logging.INFO, logger="libs.rpc"):
        for _ in range(3):
            await ask(nc, rpc.BILLING_HISTORY, BillingHistoryRequest(account_id="acc_1"))
    assert [r.getMessage() for r in caplog.records if r.name == "libs.rpc" and r.levelno >= logging.INFO] == []
