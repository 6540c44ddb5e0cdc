"""Replies on the hot paths (a gateway call's quota.check, its usage event's ack), handed over as
nats-py reads them.

nats-py gives every subscription with a callback a queue and a task: each message is put on the
queue, the task wakes on a later turn of the loop and awaits the callback. For a reply whose whole
handling is to resolve a future that is a queue, a task switch and a coroutine per message. And
its `request()` also makes a 22-character NUID in Python, reads two random bytes from the kernel,
decodes the token twice and waits through `asyncio.wait_for`. Here a reply is handed to a plain
function from nats-py's reading task the moment it is parsed (the subscription's queue is one that
hands over instead of holding), and a request's token is a counter: the inbox prefix is already
unique to the connection. nats-py is pinned (pyproject.toml); tests/integration/test_inbox.py
checks the handing-over against the real server.
"""

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)
NO_RESPONDERS = "503"
"""The status nats-server answers a request with at once when nobody listens on its subject."""


class _HandOver(asyncio.Queue[Msg]):
    """A subscription's pending queue that holds nothing: each message goes to `handle` as it comes."""

    def __init__(self, handle: Callable[[Msg], None]) -> None:
        super().__init__()
        self._handle = handle

    def put_nowait(self, item: Msg) -> None:
        try:
            self._handle(item)
        except Exception:  # never into nats-py's reading task, which would stop reading
            log.exception("handling a message on %s failed", item.subject)


async def subscribe_handing_over(nc: Client, subject: str, handle: Callable[[Msg], None]) -> Subscription:
    """Subscribe so that `handle` (not a coroutine: it must not wait) gets each message as nats-py
    parses it. No limit on pending bytes: nothing is ever pending."""
    subscription = await nc.subscribe(subject, pending_bytes_limit=0)
    subscription._pending_queue = _HandOver(handle)
    return subscription


class Requests:
    """Request/reply over one inbox subscription of this connection, replies handed over."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        await subscribe_handing_over(self._nc, self._prefix + "*", self._reply)

    def _reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)

    async def request(
        self, subject: str, payload: bytes, timeout_s: float, headers: dict[str, Any] | None = None
    ) -> Msg:
        """The reply; nats.errors.TimeoutError when none came within `timeout_s` seconds,
        NoRespondersError when nothing listens on `subject`."""
        assert self._prefix, "Requests.start() was not called"
        token, loop = str(next(self._tokens)), asyncio.get_running_loop()  # each asks the kernel for the pid
        reply = loop.create_future()
        self._waiting[token] = reply
        expiry = loop.call_later(timeout_s, _expire, reply)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg: Msg = await reply
        finally:
            expiry.cancel()
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg


def _expire(reply: "asyncio.Future[Msg]") -> None:
    if not reply.done():
        reply.set_exception(nats.errors.TimeoutError())
