"""The ops commands behind `flowplan events|dlq|accounts|replay`: each module owns one command group;
libs/cli.py only maps commands to them."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
from nats.aio.client import Client

from libs.settings import Settings


class OpsError(Exception):
    """What an operator did wrong or must know (bad input, a service not answering): the CLI
    prints the message and exits 1, without a traceback."""


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    """A NATS connection that gives up at once when the server is unreachable: a command that
    hangs retrying (as services do) would hide a wrong FLOWPLAN_NATS_URL."""
    try:
        nc = await nats.connect(settings.nats_url, name="flowplan-cli", allow_reconnect=False, connect_timeout=3)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise OpsError(f"cannot reach NATS at {settings.nats_url} (FLOWPLAN_NATS_URL): {exc!r}") from exc
    try:
        yield nc
    finally:
        await nc.close()
