"""Every instance of a service paused for a replay, not only the one running it.

A projection that runs on several instances (quota: each projects the partitions it owns; keys,
billing or refund if they split theirs) is written by all of them. The instance that got the start
request (in the service's queue group) runs the replay and coordinates: it pauses its own runner
and asks every other instance to pause theirs (`ops.replay.<projection>.pause`, answered by each,
no queue group), each between two batches; it goes on only once every one of them confirmed. After
the swap it tells them (`.resume`, swapped) to reload their memory from the new tables (for what
each projects) while still paused, then to resume from the new tables' checkpoints; without a swap
(the verify snapshot, a failure) they resume as they are.

Who must confirm: the service's live members in the lease bucket (`Peers.member_names`, from
PartitionLeases), not whoever answers a scatter-gather in time: only the expected list tells "nobody
else" from "somebody silent", and an instance that owns partitions is always a member (it renews its
member key with its leases). A member that has not confirmed within the timeout fails the replay
before its swap; one that joins while the others are paused is asked too, and the swap waits for it.

A paused instance holds its pause for `hold_s` at most: if the coordinator dies, its participants
resume by themselves, and reload first (the swap may have happened). The coordinator swaps only
while every pause is sure to hold through the swap (`Hold.confirm`), counting from when it first
asked, so a participant that resumed on its own cannot be writing to the old tables.

A service without peers (one instance projects: a leader) pauses its own runner only.
"""

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.eventlog.pause import RunnerPaused
from libs.eventlog.runner import ProjectionRunner
from proto.v1 import InstancePaused, PauseForReplay, ResumeAfterReplay, encode, subjects

log = logging.getLogger(__name__)
HOLD_S = 60.0
"""How long a participant holds a pause without hearing the resume, beyond the time it had to pause."""
SWAP_S = 20.0
"""What a swap may take once begun (its lock_timeout is 10 s): it begins only this long before the
participants' holds could end."""
RESEND_S = 1.0
"""The pause is asked again this often, of those that have not confirmed (and of newcomers)."""
CHECK_S = 0.05


class Peers(Protocol):
    """The service's live instances (libs/leases.PartitionLeases, renewed every lease/3)."""

    instance: str
    member_names: list[str]


class InstancesPaused(RunnerPaused):
    """An instance did not pause in time, or could not: the replay fails before its swap."""


@dataclass
class Hold:
    """The coordinator's view of one pause of every instance."""

    instances: list[str]
    confirm: Callable[[], Coroutine[Any, Any, None]]
    """Before the swap: every live member has confirmed (newcomers asked), and the holds last long
    enough for the swap; raises InstancesPaused otherwise."""
    swapped: bool = False
    """Set once the tables were swapped: the participants reload on resume."""


class PauseAll:
    """The coordinator's side: `async with PauseAll(...).paused() as hold:` every instance stands still."""

    def __init__(
        self, runner: ProjectionRunner, nc: Client, peers: Peers | None, instance: str, projection: str,
        replay_id: str, timeout_s: float,
    ) -> None:  # fmt: skip
        self._runner, self._nc, self._peers, self._instance = runner, nc, peers, instance
        self._projection, self._replay_id, self._timeout_s = projection, replay_id, timeout_s
        self._pauses = 0

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[Hold]:
        async with self._runner.pause.paused(self._timeout_s):
            if self._peers is None:

                async def alone() -> None:
                    return None

                yield Hold([self._instance], alone)
                return
            self._pauses += 1
            hold: Hold | None = None
            async with _Gathering(self._nc, self._peers, self._projection, f"{self._replay_id}.{self._pauses}",
                                  self._timeout_s) as gathering:  # fmt: skip
                try:
                    await gathering.until_all_paused()
                    hold = Hold([self._peers.instance, *sorted(gathering.paused)], gathering.confirm)
                    yield hold
                finally:  # everyone resumes, failed or not (those that paused reload if swapped)
                    await gathering.resume(swapped=hold is not None and hold.swapped)


class _Gathering:
    def __init__(self, nc: Client, peers: Peers, projection: str, pause_id: str, timeout_s: float) -> None:
        self._nc, self._peers, self._projection, self._timeout_s = nc, peers, projection, timeout_s
        self._request = PauseForReplay(
            replay_id=pause_id, coordinator=peers.instance, timeout_s=timeout_s, hold_s=timeout_s + HOLD_S
        )
        self.paused: set[str] = set()
        self._resumed: set[str] = set()
        self._refused: dict[str, str] = {}
        self._inbox = nc.new_inbox()
        self._first_sent = 0.0
        self._decode = msgspec.json.Decoder(InstancePaused)

    async def __aenter__(self) -> "_Gathering":
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_answer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def _on_answer(self, msg: Msg) -> None:
        try:
            answer = self._decode.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # a service that does not know the pause answers with its refusal: it stays unconfirmed
        if answer.replay_id != self._request.replay_id or answer.instance == self._peers.instance:
            return
        if answer.paused:
            self.paused.add(answer.instance)
        elif answer.error is not None:
            self._refused[answer.instance] = answer.error
        else:
            self._resumed.add(answer.instance)

    def _missing(self) -> set[str]:
        return set(self._peers.member_names) - {self._peers.instance} - self.paused

    async def until_all_paused(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        sent = 0.0
        while missing := self._missing():
            if self._refused:
                instance, error = next(iter(self._refused.items()))
                raise InstancesPaused(f"instance {instance} could not pause: {error}")
            now = time.monotonic()
            if now > deadline:
                raise InstancesPaused(
                    f"instance(s) {', '.join(sorted(missing))} did not confirm the pause within {self._timeout_s:.0f} s"
                )
            if now - sent >= RESEND_S:
                sent = now
                self._first_sent = self._first_sent or now
                await self._nc.publish(
                    subjects.replay_pause(self._projection), encode(self._request), reply=self._inbox
                )
            await asyncio.sleep(CHECK_S)

    async def confirm(self) -> None:
        await self.until_all_paused()
        if self._first_sent and time.monotonic() > self._first_sent + self._request.hold_s - SWAP_S:
            raise InstancesPaused(
                f"the other instances' pause could end before the swap (held {self._request.hold_s:.0f} s)"
            )

    async def resume(self, *, swapped: bool) -> None:
        """Tell every instance (those that paused answer once resumed: reloaded first, if swapped)."""
        if not self._first_sent:
            return
        resume = ResumeAfterReplay(replay_id=self._request.replay_id, swapped=swapped)
        deadline = time.monotonic() + self._timeout_s
        sent = 0.0
        while (waiting := self.paused - self._resumed) and time.monotonic() < deadline:
            if time.monotonic() - sent >= RESEND_S:
                sent = time.monotonic()
                await self._nc.publish(subjects.replay_resume(self._projection), encode(resume), reply=self._inbox)
            await asyncio.sleep(CHECK_S)
        if waiting:  # they resume by themselves once their hold ends, reloading first
            log.warning("replay %s: no resume confirmed by %s", self._request.replay_id, ", ".join(sorted(waiting)))


@dataclass
class _Held:
    request: PauseForReplay
    parked: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    swapped: bool = False
    error: str | None = None


class PauseParticipant:
    """Every instance's side: pause the runner when the coordinator asks, reload if the tables were
    swapped, resume. Served with the replay's other subjects (ReplayControl)."""

    def __init__(
        self, projection: Any, runner: ProjectionRunner, pool: asyncpg.Pool, instance: str,
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:  # fmt: skip
        self._projection, self._runner, self._pool, self.instance = projection, runner, pool, instance
        self._spawn = spawn
        self._held: OrderedDict[str, _Held] = OrderedDict()
        """The pauses asked of this instance, the latest few (a late repeat of one over is not held again)."""

    async def on_pause(self, request: PauseForReplay) -> InstancePaused:
        if request.coordinator == self.instance:  # it pauses itself
            return InstancePaused(replay_id=request.replay_id, instance=self.instance, paused=True)
        held = self._held.get(request.replay_id)
        if held is None:
            held = self._remember(_Held(request))
            self._spawn(self._hold(held), f"replay-pause-{request.replay_id}")
        await held.parked.wait()
        if held.done.is_set() and held.error is None:
            return InstancePaused(replay_id=request.replay_id, instance=self.instance, paused=False, error="resumed")
        return InstancePaused(
            replay_id=request.replay_id, instance=self.instance, paused=held.error is None, error=held.error
        )

    async def on_resume(self, request: ResumeAfterReplay) -> InstancePaused:
        held = self._held.get(request.replay_id)
        if held is None:  # never asked (or not yet: a late request to pause must not hold)
            over = PauseForReplay(replay_id=request.replay_id, coordinator="", timeout_s=0, hold_s=0)
            held = self._remember(_Held(over))
            held.parked.set()
            held.done.set()
        held.swapped = held.swapped or request.swapped
        held.resume.set()
        await held.done.wait()
        return InstancePaused(replay_id=request.replay_id, instance=self.instance, paused=False)

    def _remember(self, held: _Held) -> _Held:
        self._held[held.request.replay_id] = held
        while len(self._held) > 16:
            self._held.popitem(last=False)
        return held

    async def _hold(self, held: _Held) -> None:
        """Crash-only: a reload that fails ends the process (its memory is loaded at the next start)."""
        try:
            async with self._runner.pause.paused(held.request.timeout_s):
                held.parked.set()
                log.info("replay %s: paused for %s", held.request.replay_id, held.request.coordinator)
                try:
                    await asyncio.wait_for(held.resume.wait(), held.request.hold_s)
                except TimeoutError:  # the coordinator is gone: the tables may have been swapped
                    log.warning("replay %s: no resume within %.0f s; reloading", held.request.replay_id,
                                held.request.hold_s)  # fmt: skip
                    held.swapped = True
                if held.swapped:
                    await self._pool.expire_connections()  # no statement prepared against the old tables
                    async with self._pool.acquire() as conn:
                        await self._projection.reload(conn)
                    log.info("replay %s: memory reloaded from the swapped tables", held.request.replay_id)
        except RunnerPaused as exc:
            held.error = str(exc)
        finally:
            held.done.set()
            held.parked.set()
