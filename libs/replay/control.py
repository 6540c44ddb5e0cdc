"""A service's side of `flowplan replay`: answers ops.replay.<projection>.* and runs one replay
at a time, in the background, keeping the last one's outcome for the status requests.

With several instances (peers), the one that gets the start request (in the service's queue group)
runs the replay and pauses the others for its catch-ups and its swap (instances.py); each answers
the status with its own last replay, named by its replay_id, which `flowplan replay` picks out."""

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from nats.aio.client import Client

from libs.eventlog.runner import ProjectionRunner
from libs.leases import instance_name
from libs.replay.instances import PauseAll, PauseParticipant, Peers
from libs.replay.rebuild import Rebuild, Rebuildable
from libs.rpc import Replier
from libs.settings_views import ProjectionSettings
from proto.v1 import ReplayProgress, ReplayStatusRequest, StartReplay, rpc

log = logging.getLogger(__name__)


class ReplayControl:
    def __init__(
        self, projection: Rebuildable, runner: ProjectionRunner, pool: asyncpg.Pool, nc: Client,
        settings: ProjectionSettings, spawn: Callable[[Coroutine[Any, Any, None], str], None],
        peers: Peers | None = None,
    ) -> None:  # fmt: skip
        self._projection, self._runner, self._pool, self._nc = projection, runner, pool, nc
        self._settings, self._spawn, self._peers = settings, spawn, peers
        self._current: Rebuild | None = None
        instance = peers.instance if peers is not None else instance_name()
        self._participant = PauseParticipant(projection, runner, pool, instance, spawn)

    def serve(self, responders: Replier) -> None:
        """One instance starts a replay (the queue group); every instance answers the status, the
        discovery and the pauses (no queue group)."""
        name = self._projection.name
        responders.reply(rpc.replay_start(name), self._on_start, undecodable=self._refused)
        responders.reply(rpc.replay_status(name), self._on_status, queue=None)
        responders.reply(rpc.REPLAY_DISCOVER, self._on_status, queue=None)
        responders.reply(rpc.replay_pause(name), self._participant.on_pause, queue=None)
        responders.reply(rpc.replay_resume(name), self._participant.on_resume, queue=None)

    def progress(self) -> ReplayProgress:
        if self._current is None:
            return ReplayProgress(projection=self._projection.name, phase="idle")
        return self._current.progress()

    async def _on_status(self, _: ReplayStatusRequest) -> ReplayProgress:
        return self.progress()

    async def _on_start(self, request: StartReplay) -> ReplayProgress:
        if request.from_seq < 1:
            return self._refused(f"from_seq must be 1 or more, not {request.from_seq}")
        if not 0 < request.pause_timeout_s <= 600:
            return self._refused(f"pause_timeout_s must be more than 0 and 600 at most, not {request.pause_timeout_s}")
        if self._current is not None and self._current.running:
            return self._refused(f"a replay of {self._projection.name} is already running")
        replay_id = uuid.uuid4().hex[:12]
        pause_all = PauseAll(
            self._runner, self._nc, self._peers, self._participant.instance, self._projection.name, replay_id,
            request.pause_timeout_s,
        )  # fmt: skip
        self._current = Rebuild(
            self._projection, self._runner, self._pool, self._nc,
            database_url=self._settings.database_url, stream=self._settings.stream,
            partitions=self._settings.partitions, request=request, pause_all=pause_all, replay_id=replay_id,
        )  # fmt: skip
        # A replay that fails before its swap says so in its status; one that fails after it takes the
        # process down, so that memory is loaded afresh from the swapped tables (crash-only). One
        # still running when the service stops is cancelled before the pool closes.
        self._spawn(self._current.run(), f"replay-{self._projection.name}")
        log.info("replay of %s started: %r", self._projection.name, request)
        return self.progress()

    def _refused(self, error: str) -> ReplayProgress:
        return ReplayProgress(projection=self._projection.name, phase="failed", error=error)
