"""libs.runtime against a real nats-server (no services, no database): what a service's Runtime
promises about its NATS responders."""

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.localservers import LocalNats
from libs.runtime import Runtime
from libs.settings import load_settings
from libs.settings_views import RuntimeSettings, narrowed
from tests.lost_cancel import as_a_reply_comes

pytestmark = pytest.mark.connected


async def test_a_request_right_after_answer_finds_the_responder(nats_server: LocalNats, nc: Client) -> None:
    """answer() returns once the server has the subscription (libs.connections.subscribed): before,
    it only queued the SUB, and a request sent at once from another connection got "no responders"."""
    settings: RuntimeSettings = narrowed(load_settings({}, nats_url=nats_server.url), RuntimeSettings)
    runtime = Runtime("quota", settings)
    await runtime.connect()

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    failed: list[BaseException] = []
    for i in range(200):
        await runtime.answer(f"test.answer.{i}", echo)
        asked = (nc.request(f"test.answer.{i}", b"%d" % i, timeout=5) for _ in range(2))
        failed += [answer for answer in await asyncio.gather(*asked, return_exceptions=True)
                   if isinstance(answer, BaseException)]  # fmt: skip
    await runtime.close()
    assert failed == []


async def test_close_ends_a_spawned_loop_whose_cancel_was_lost(nats_server: LocalNats) -> None:
    """A service's close cancels its background loops; one cancelled as a NATS reply came in went on
    (Python 3.11's wait_for: libs/cancelling.py) and close() waited for it for ever."""
    settings: RuntimeSettings = narrowed(load_settings({}, nats_url=nats_server.url), RuntimeSettings)
    runtime = Runtime("quota", settings)
    await runtime.connect()
    loop = await as_a_reply_comes()
    runtime._tasks.append(loop)  # as spawn() keeps it
    await runtime.close()
    assert loop.cancelled()
