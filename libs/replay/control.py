"""A service's side of `flowplan replay`: answers ops.replay.<projection>.* and runs one replay
at a time, in the background, keeping the last one's outcome for the status requests."""

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from nats.aio.client import Client

from libs.eventlog.runner import ProjectionRunner
from libs.replay.rebuild import Rebuild, Rebuildable
from libs.rpc import Replier
from libs.settings import ProjectionSettings
from proto.v1 import ReplayProgress, ReplayStatusRequest, StartReplay, rpc

log = logging.getLogger(__name__)


class ReplayControl:
    def __init__(
        self, projection: Rebuildable, runner: ProjectionRunner, pool: asyncpg.Pool, nc: Client,
        settings: ProjectionSettings, spawn: Callable[[Coroutine[Any, Any, None], str], None],
        others: Callable[[], int] = lambda: 0,
    ) -> None:  # fmt: skip
        """others: how many other instances project partitions of this projection now. A replay
        pauses this instance's runner only, and every instance answers the start: with others, each
        would rebuild and swap the same tables while the others' runners write to them."""
        self._projection, self._runner, self._pool, self._nc = projection, runner, pool, nc
        self._others = others
        self._settings, self._spawn = settings, spawn
        self._current: Rebuild | None = None

    def serve(self, responders: Replier) -> None:
        """Every instance answers (no queue group): `flowplan replay` discovers the projections."""
        name = self._projection.name
        responders.reply(rpc.replay_start(name), self._on_start, queue=None, undecodable=self._refused)
        responders.reply(rpc.replay_status(name), self._on_status, queue=None)
        responders.reply(rpc.REPLAY_DISCOVER, self._on_status, queue=None)

    def progress(self) -> ReplayProgress:
        if self._current is None:
            return ReplayProgress(projection=self._projection.name, phase="idle")
        return self._current.progress()

    async def _on_status(self, _: ReplayStatusRequest) -> ReplayProgress:
        return self.progress()

    async def _on_start(self, request: StartReplay) -> ReplayProgress:
        if request.from_seq < 1:
            return self._refused(f"from_seq must be 1 or more, not {request.from_seq}")
        if others := self._others():
            return self._refused(f"{others + 1} instances project {self._projection.name} by partition: "
                                 "stop all but one of them to replay it")  # fmt: skip
        if self._current is not None and self._current.running:
            return self._refused(f"a replay of {self._projection.name} is already running")
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
        return self.progress()

    def _refused(self, error: str) -> ReplayProgress:
        return ReplayProgress(projection=self._projection.name, phase="failed", error=error)
