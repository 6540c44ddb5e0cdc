"""Connections every service opens, with the same reconnect behaviour and health check."""

import logging

import asyncpg
from nats.aio.client import Client

log = logging.getLogger(__name__)


async def connect_nats(url: str, name: str) -> Client:
    nc = Client()

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("%s: NATS disconnected", name)

    async def on_reconnect() -> None:
        log.info("%s: NATS reconnected", name)

    async def on_error(exc: Exception) -> None:
        log.warning("%s: NATS error %r", name, exc)

    await nc.connect(
        url,
        name=f"flowplan-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; nats-py accepts a float
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    return nc


async def subscribed(nc: Client) -> None:
    """Return once the server has processed every SUB this connection sent so far, so that a request
    from any other connection finds these subscribers.

    One `nc.flush()` does not promise it (nats-py 2.16.0, nats/aio/client.py:2344): its PING is
    written to the socket at once, while SUB (like every command) waits in `_pending` for the
    flusher task. The server answers PONG before it has read the SUBs, and a request sent then from
    another connection can meet no subscriber and get a 503 "no responders": 3-7% of Responders
    starts on 2 shared cores (17% under two busy loops). The second flush's PING follows the SUBs:
    the flusher task, woken when they were queued, writes them before the loop can read the first
    PONG (or behind what it was still writing, in order). Public API only, so both waits keep
    flush()'s timeout and let a cancellation through."""
    await nc.flush()
    await nc.flush()


async def close_nats(nc: Client) -> None:
    """Flush what was published, then close. (drain() would wait out its timeout on pull
    subscriptions whose fetch was cancelled.)"""
    try:
        await nc.flush(timeout=2)
    except Exception:  # already disconnected: nothing left to flush
        pass
    await nc.close()


async def health(nc: Client, pool: asyncpg.Pool) -> dict[str, bool]:
    try:
        postgres = await pool.fetchval("SELECT true", timeout=1.0) is True
    except Exception:
        postgres = False
    return {"nats": nc.is_connected, "postgres": postgres}
