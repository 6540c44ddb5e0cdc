"""Quota killed (SIGKILL) and restarted under a burst of calls admits no more than the caps allow:
it rebuilds the calls in flight and the RPM state from the gateways' heartbeats before it admits."""

import asyncio
import contextlib
import time

import aiohttp
import pytest

from libs.localservers import LocalNats, LocalPostgres
from libs.settings import Settings
from tests.e2e.conftest import CHEAP, GLM, TOKENS_PER_S, Burst, call, fill_window_to, metered, reservation_settings
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected
RPM_INTERVAL_S = 6.0  # the Free plan's 10 RPM: one call every 6 s after a burst of 10


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres) -> Settings:
    return await reservation_settings(nats_server, postgres)


@pytest.fixture(scope="module")
async def paced(stack: Stack) -> Stack:
    await asyncio.to_thread(stack.simulator.stop)
    await asyncio.to_thread(stack.simulator.start, {"FLOWPLAN_SIMULATOR_TOKENS_PER_S": str(TOKENS_PER_S)})
    return stack


async def kill_and_restart_quota(stack: Stack) -> None:
    await asyncio.to_thread(stack.quota.kill)
    await asyncio.sleep(0.5)  # the burst meets a quota that is gone
    await asyncio.to_thread(stack.quota.start)  # returns once quota listens: rebuilt, admitting


async def test_reservations_of_running_calls_survive_a_quota_sigkill_under_a_burst(paced: Stack) -> None:
    account = await fill_account(paced)
    # A GLM stream of 4,000 tokens (about 20 s) reserves about 0.35 Flows: the window is full while it runs.
    stream = asyncio.create_task(call(paced, account["key"], GLM, 4000, stream=True))
    await asyncio.sleep(1.0)
    # One call at a time, paced so that the burst stays within the plan's 10 RPM: every refusal
    # here is the window's, not the rate limit's.
    burst = Burst(paced, account["key"], GLM, workers=1, pause_s=0.8)
    await asyncio.sleep(1.0)
    await kill_and_restart_quota(paced)
    await asyncio.sleep(2.5)  # the burst goes on against the restarted quota
    answers = await burst.stop()
    assert not stream.done(), "the stream ended before the burst did: the test proves nothing"
    statuses = [status for status, _, _ in answers]
    assert 200 not in statuses, answers  # nothing admitted past the full window, before, during or after
    assert 503 in statuses, answers  # the restart was met
    assert all(retry is not None for status, retry, _ in answers if status in (429, 503)), answers
    after_restart = answers[statuses.index(503) :]
    assert "quota_exhausted" in [code for _, _, code in after_restart], answers  # refused by the window again
    assert "quota_exhausted" in [code for _, _, code in answers[: statuses.index(503)]], answers
    status, _, _ = await stream
    assert status == 200
    await metered(paced, account["key"], 2)


async def test_the_rate_limit_survives_a_quota_sigkill_under_a_burst(paced: Stack) -> None:
    account = await paced.create_account()
    started = time.monotonic()
    for _ in range(7):
        status, _, body = await call(paced, account["key"], CHEAP, 1)
        assert status == 200, body
    burst = Burst(paced, account["key"], CHEAP)
    await kill_and_restart_quota(paced)
    await asyncio.sleep(2.0)
    answers = await burst.stop()
    elapsed = time.monotonic() - started
    admitted = 7 + sum(status == 200 for status, _, _ in answers)
    assert any(status == 503 for status, _, _ in answers)
    # GCRA at 10 RPM: a burst of 10, then one every 6 s. A fresh rate limit would admit 10 more.
    assert admitted <= 10 + int(elapsed / RPM_INTERVAL_S), (admitted, elapsed, answers)
    assert any(code == "rate_limit_exceeded" for _, _, code in answers)


async def fill_account(stack: Stack) -> dict[str, str]:
    account = await stack.create_account()
    assert 4.9 < await fill_window_to(stack, account, 29_000) < 5
    return account


async def test_a_killed_gateways_reservations_go_once_its_heartbeats_stop(paced: Stack) -> None:
    account = await fill_account(paced)
    stream = asyncio.create_task(call(paced, account["key"], GLM, 4000, stream=True))
    await asyncio.sleep(1.0)
    status, _, body = await call(paced, account["key"], GLM, 1)
    assert status == 429 and b"quota_exhausted" in body  # the stream's reservation fills the window
    await asyncio.to_thread(paced.gateway.kill)  # the call dies with it and never reports
    with contextlib.suppress(aiohttp.ClientError):
        await stream
    await asyncio.to_thread(paced.gateway.start)

    async def admitted() -> bool:
        status, _, _ = await call(paced, account["key"], GLM, 1)
        return status == 200

    await eventually(admitted, within=30, interval=1.0)  # not stuck for good: the room comes back
