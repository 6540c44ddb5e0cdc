"""`flowplan replay`: ask the services that own the projections to replay them (libs/replay
does the work there), follow their progress with a bar each, and sum up what happened.

A service may run several instances: one of them runs the replay (and pauses the others); every
instance answers the status requests with its own last replay, so the replay is followed by the id
its start answered with."""

import asyncio
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from libs.ops import OpsError, connected
from libs.rpc import Unavailable, ask
from libs.settings import Settings
from proto.v1 import ReplayProgress, ReplayStatusRequest, StartReplay, encode, rpc, subjects

DISCOVERY_S = 1.0
POLL_S = 0.25
SILENCE_S = 180.0
"""A service that answers no status request for this long is taken to have died (a rebuild keeps
its event loop busy: on a loaded machine an answer can take seconds)."""
_progress = msgspec.json.Decoder(ReplayProgress)


async def discover(nc: Client) -> list[str]:
    """Every projection whose service answers: each one replies to the discovery request."""
    found: list[str] = []
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        found.append(_progress.decode(msg.data).projection)

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subjects.REPLAY_DISCOVER, encode(ReplayStatusRequest()), reply=inbox)
    await asyncio.sleep(DISCOVERY_S)
    await sub.unsubscribe()
    return sorted(set(found))


async def replay(
    settings: Settings, projection: str, request: StartReplay, console: Console | None = None
) -> list[ReplayProgress]:
    """Replay one projection or "all" of them (at once, each in its own service); return how each ended."""
    async with connected(settings) as nc:
        names = await discover(nc) if projection == "all" else [projection]
        if not names:
            raise OpsError("no service answers for any projection: are the services running?")
        replays = {name: await _start(nc, name, request) for name in names}
        return await _follow(nc, replays, console)


async def _start(nc: Client, name: str, request: StartReplay) -> str:
    """The replay's id."""
    try:
        started = await ask(nc, rpc.replay_start(name), request, 5)
    except Unavailable as exc:
        raise OpsError(f"no service answers for projection {name!r}: is it running, is the name right?") from exc
    if started.error:
        raise OpsError(f"{name}: {started.error}")
    return started.replay_id


async def status(nc: Client, name: str, replay_id: str, timeout_s: float = 10.0) -> ReplayProgress:
    """The progress of one replay, from whichever instance of the service runs it (every instance
    answers; the others' answers are about their own replays, or none). Raises Unavailable."""
    found: asyncio.Future[ReplayProgress] = asyncio.get_running_loop().create_future()

    async def collect(msg: Msg) -> None:
        try:
            progress = _progress.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if progress.replay_id == replay_id and not found.done():
            found.set_result(progress)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subjects.replay_status(name), encode(ReplayStatusRequest()), reply=inbox)
        return await asyncio.wait_for(found, timeout_s)
    except TimeoutError as exc:
        raise Unavailable(name, subjects.replay_status(name)) from exc
    finally:
        await sub.unsubscribe()


async def _follow(nc: Client, replays: dict[str, str], console: Console | None) -> list[ReplayProgress]:
    names = list(replays)
    latest: dict[str, ReplayProgress] = {}
    heard: dict[str, float] = dict.fromkeys(names, time.monotonic())
    with _Bars(names, console) as bars:
        while True:
            for name in names:
                if name in latest and latest[name].phase in ("done", "failed"):
                    continue
                try:
                    progress = await status(nc, name, replays[name])
                except Unavailable:
                    if time.monotonic() - heard[name] > SILENCE_S:
                        latest[name] = ReplayProgress(
                            projection=name, phase="failed", error=f"the {name} service stopped answering"
                        )
                    continue
                heard[name] = time.monotonic()
                latest[name] = progress
                bars.show(latest[name])
            if len(latest) == len(names) and all(p.phase in ("done", "failed") for p in latest.values()):
                return [latest[name] for name in names]
            await asyncio.sleep(POLL_S)


class _Bars:
    """One progress bar per projection (nothing at all without a console)."""

    def __init__(self, names: list[str], console: Console | None) -> None:
        self._progress: Progress | None = None
        if console is not None:
            self._progress = Progress(
                TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9} events/s"), TextColumn("{task.fields[phase]}"),
                TimeElapsedColumn(), console=console,
            )  # fmt: skip
        self._tasks: dict[str, TaskID] = {}
        self._names = names

    def __enter__(self) -> "_Bars":
        if self._progress is not None:
            self._progress.start()
            for name in self._names:
                self._tasks[name] = self._progress.add_task(name, total=None, rate="", phase="starting")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, progress: ReplayProgress) -> None:
        if self._progress is None:
            return
        rate = progress.read / progress.rebuild_seconds if progress.rebuild_seconds else _rate(progress)
        self._progress.update(
            self._tasks[progress.projection], completed=progress.read, total=max(progress.total, progress.read, 1),
            rate=f"{rate:,.0f}", phase=progress.phase,
        )  # fmt: skip


def _rate(progress: ReplayProgress) -> float:
    return progress.read / progress.seconds if progress.seconds > 0 else 0.0


def summary(progress: ReplayProgress, say: Callable[[str], None]) -> None:
    """Say how one replay ended, table by table when it differed."""
    p = progress
    rate = p.read / p.rebuild_seconds if p.rebuild_seconds else _rate(p)
    line = f"{p.projection}: {p.read:,} events in {p.rebuild_seconds or p.seconds:.1f} s ({rate:,.0f} events/s)"
    if p.phase == "failed":
        say(f"{line}; FAILED: {p.error}")
        return
    if p.verified or p.differences:
        line += f"; verified in {p.verify_seconds:.1f} s: " + ("DIFFERENT" if p.differences else "identical")
    line += "; swapped" if p.swapped else "; NOT swapped"
    on = f" on {len(p.instances)} instances" if len(p.instances) > 1 else ""
    line += f" (live projection paused {p.paused_ms:,.0f} ms{on})" if p.swapped else ""
    if p.skipped:
        line += f"; {p.skipped} events left out (not applicable, as in the live projection)"
    if p.kept_schema:
        line += f"; old tables kept in schema {p.kept_schema}"
    say(line)
    for d in p.differences:
        say(f"  table {d.table}: live {d.live_rows:,} rows, rebuilt {d.rebuilt_rows:,} rows")
        for key in d.first_keys:
            say(f"    {key}")
