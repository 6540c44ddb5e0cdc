"""A service's side of `flowplan replay`: answers ops.replay.<projection>.* and runs one replay
at a time, in the background, keeping the last one's outcome for the status requests."""

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.eventlog.runner import ProjectionRunner
from libs.replay.rebuild import Rebuild, Rebuildable
from libs.settings import RuntimeSettings
from proto.v1 import ReplayProgress, StartReplay, encode, subjects

log = logging.getLogger(__name__)
_start = msgspec.json.Decoder(StartReplay)


class ReplayControl:
    def __init__(
        self, projection: Rebuildable, runner: ProjectionRunner, pool: asyncpg.Pool, nc: Client,
        settings: RuntimeSettings, spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:  # fmt: skip
        self._projection, self._runner, self._pool, self._nc = projection, runner, pool, nc
        self._settings, self._spawn = settings, spawn
        self._current: Rebuild | None = None

    async def start(self) -> None:
        name = self._projection.name
        await self._nc.subscribe(subjects.replay_start(name), cb=self._on_start)
        await self._nc.subscribe(subjects.replay_status(name), cb=self._on_status)
        await self._nc.subscribe(subjects.REPLAY_DISCOVER, cb=self._on_status)

    def progress(self) -> ReplayProgress:
        if self._current is None:
            return ReplayProgress(projection=self._projection.name, phase="idle")
        return self._current.progress()

    async def _on_status(self, msg: Msg) -> None:
        await msg.respond(encode(self.progress()))

    async def _on_start(self, msg: Msg) -> None:
        try:
            request = _start.decode(msg.data)
        except msgspec.ValidationError as exc:
            await self._refuse(msg, f"bad StartReplay: {exc}")
            return
        if request.from_seq < 1:
            await self._refuse(msg, f"from_seq must be 1 or more, not {request.from_seq}")
            return
        if self._current is not None and self._current.running:
            await self._refuse(msg, f"a replay of {self._projection.name} is already running")
            return
        self._current = Rebuild(
            self._projection, self._runner, self._pool, self._nc,
            database_url=self._settings.database_url, stream=self._settings.stream,
            partitions=self._settings.partitions, request=request,
        )  # fmt: skip
        # A replay that fails before its swap says so in its status; one that fails after it takes the
        # process down, so that memory is loaded afresh from the swapped tables (crash-only). One
        # still running when the service stops is cancelled before the pool closes.
        self._spawn(self._current.run(), f"replay-{self._projection.name}")
        log.info("replay of %s started: %r", self._projection.name, request)
        await msg.respond(encode(self.progress()))

    async def _refuse(self, msg: Msg, error: str) -> None:
        await msg.respond(encode(ReplayProgress(projection=self._projection.name, phase="failed", error=error)))
