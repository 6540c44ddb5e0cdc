"""A reservation lives as long as its call: long streams and PAYG failures through the gateway.

The module runs with heartbeats every 0.5 s and a simulator paced at 200 tokens/s, so that a
2,000-token stream runs about 10 s: five times OLD_LIFETIME_S, the fixed lifetime quota gave a
reservation before (as this module used to configure it), and twenty heartbeats."""

import asyncio
import time

import pytest

from libs.localservers import LocalNats, LocalPostgres
from libs.settings import Settings
from tests.e2e.conftest import (
    CHEAP,
    GLM,
    TOKENS_PER_S,
    balance,
    call,
    fill_window_to,
    metered,
    payg_key,
    reservation_settings,
    top_up,
)
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected
LONG = 2000  # output tokens of a long call: about 10 s at the simulator's pace
OLD_LIFETIME_S = 2.0


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres) -> Settings:
    return await reservation_settings(nats_server, postgres)


@pytest.fixture(scope="module")
async def paced(stack: Stack) -> Stack:
    """The stack with a simulator that streams at TOKENS_PER_S."""
    await asyncio.to_thread(stack.simulator.stop)
    await asyncio.to_thread(stack.simulator.start, {"FLOWPLAN_SIMULATOR_TOKENS_PER_S": str(TOKENS_PER_S)})
    return stack


async def test_reservations_hold_while_a_stream_outlasts_the_old_timeout(paced: Stack) -> None:
    account = await paced.create_account()
    # 4.912 of the 5 Flows used: a 2,000-token GLM stream (about 0.175 Flows reserved) is admitted,
    # and while it runs nothing else fits.
    assert 4.9 < await fill_window_to(paced, account, 29_000) < 5
    started = time.monotonic()
    stream = asyncio.create_task(call(paced, account["key"], GLM, LONG, stream=True))
    probes: list[tuple[float, int]] = []
    for at in (1.0, 4.0, 6.0):  # the old 2 s lifetime (and 3 missed beats) long past by the last two
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        status, headers, body = await call(paced, account["key"], GLM, 1)
        probes.append((time.monotonic() - started, status))
        assert status == 429 and b"quota_exhausted" in body, (probes, body)
        assert not stream.done(), "the stream ended before the probe: the test proves nothing"
    status, headers, _ = await stream
    assert status == 200 and headers["x-flowplan-billing-mode"] == "subscription"
    assert probes[-1][0] > 2 * OLD_LIFETIME_S
    events = await metered(paced, account["key"], 2)
    assert sorted(e["output_tokens"] for e in events) == [LONG, 29_000]


async def test_concurrent_payg_streams_cannot_overdraw_a_small_balance(paced: Stack) -> None:
    account = await paced.create_account()
    key = (await payg_key(paced, account))["key"]
    await top_up(paced, account["account_id"], "0.002")  # a long DeepSeek call reserves about 0.00085 USD

    async def wave() -> list[int]:
        calls = [call(paced, key, CHEAP, LONG, stream=True) for _ in range(4)]
        return [status for status, _, _ in await asyncio.gather(*calls)]

    first = asyncio.create_task(wave())
    await asyncio.sleep(4.0)  # the first wave streams on, past the old 2 s lifetime of its reservations
    assert not first.done()
    second = await wave()
    assert sorted(second) == [402] * 4, second  # the first wave's reservations still hold the balance
    assert not first.done(), "the first wave ended before the second: the test proves nothing"
    assert sorted(await first) == [200, 200, 402, 402]
    events = await metered(paced, account["key"], 2)
    spent = sum(int(e["usd_cost"].replace(".", "")) for e in events)
    assert all(e["billing_mode"] == "payg" for e in events)

    async def settled() -> str:
        left = await balance(paced, account["key"])
        return left if left == f"{(2_000 - spent) / 1_000_000:.6f}" else ""

    assert float(await eventually(settled)) >= 0


async def test_a_payg_call_the_upstream_refuses_frees_its_reserved_balance_at_once(paced: Stack) -> None:
    account = await paced.create_account()
    key = (await payg_key(paced, account))["key"]
    await top_up(paced, account["account_id"], "0.001")  # covers one long call's estimate, not two
    refused, _, body = await call(paced, key, CHEAP, LONG, messages="not a list of messages")
    assert 400 <= refused < 500 and refused != 402, body  # the upstream's refusal, not the gateway's
    status, headers, body = await call(paced, key, CHEAP, LONG)  # at once: well inside the old 2 s
    assert status == 200, body
    assert headers["x-flowplan-billing-mode"] == "payg"
