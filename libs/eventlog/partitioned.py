"""A projection split over a service's instances by partition leases: each instance runs the
partitions of the event log it holds a lease for (libs/leases.py, `owner.<service>.<partition>`),
each from its checkpoint (`ProjectionRunner.run_partition`), and no other. Used by keys, billing
and refund, whose projections need no more than that. quota's partitions (services/quota/
partitions.py) follow the same steps with more of their own: a take-over there rebuilds admission
state before it answers.

Every CHECK_S it compares what the leases hold with what runs:
- a partition held and not desired elsewhere, not running: start its projection;
- running but lost (a renewal found another holder) or desired elsewhere (an instance joined):
  stop it, which returns once its last batch committed (within a fetch's second);
- desired elsewhere and stopped: release the lease (hand_over=True), so the next owner starts only
  once this one has stopped writing;
- stopped by its fence (a renewal late under load lost the lease as it started, or a newer writer
  took it): started again while the lease is held, under the lease held then.
A killed instance's leases run out after the lease time and the desired owners take them.

The lease a partition is projected under is `leases.revision(partition)`: the fencing token for
its commits (docs/scaling.md, "Fencing")."""

import asyncio
import logging

from libs.eventlog.runner import ProjectionRunner
from libs.leases import PartitionLeases

log = logging.getLogger(__name__)
CHECK_S = 0.1


class PartitionedProjection:
    def __init__(self, leases: PartitionLeases, runner: ProjectionRunner, *, check_s: float = CHECK_S) -> None:
        if not (leases.rebalance and leases.hand_over):
            raise ValueError("a partitioned projection hands partitions over itself: rebalance and hand_over")
        self.leases, self.runner, self._check_s = leases, runner, check_s
        self._running: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._stopping = False
        self._between_steps = asyncio.Event()
        self._between_steps.set()

    def projecting(self) -> set[int]:
        """The partitions whose projection runs here now."""
        return {p for p, (_, task) in self._running.items() if not task.done()}

    def settled(self) -> bool:
        """Every partition this instance should own among the live instances runs here (none, when
        the others hold them all)."""
        return self.leases.desired <= self.projecting()

    async def until_settled(self, timeout_s: float) -> bool:
        """Wait until settled (False after timeout_s: a killed predecessor's leases still run)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.settled():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(self._check_s)
        return True

    async def run(self) -> None:
        """Follow the leases until stop(). A partition's projection that dies takes this loop, and
        the process (Runtime.spawn), with it: crash-only, as the unpartitioned runner does."""
        while not self._stopping:
            self._between_steps.clear()
            try:
                await self.step()
            finally:
                self._between_steps.set()
            await asyncio.sleep(self._check_s)

    async def step(self) -> None:
        held = {p for p in range(self.leases.partitions) if self.leases.holds(p)}
        leaving = self.leases.leaving()
        for partition, (_, task) in list(self._running.items()):
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise RuntimeError(f"{self.runner.projection.name} p{partition}: the projection died") from exc
            if task.done():  # fenced: its lease was not its own as it started or committed
                del self._running[partition]  # started again below while held (stamping the lease held now)
                log.warning("%s p%d: stopped, fenced; again while its lease is held", self.runner.projection.name,
                            partition)  # fmt: skip
        for partition in sorted(held - leaving - set(self._running)):
            self._start(partition)
        await self._stop(sorted(set(self._running) - (held - leaving)))
        for partition in sorted(leaving - set(self._running)):
            await self.leases.release(partition)
            log.info("%s p%d: handed over", self.runner.projection.name, partition)

    async def stop(self) -> None:
        """A clean shutdown: stop every partition's projection (its last batch committed), then hand
        every lease over at once."""
        self._stopping = True
        await self._between_steps.wait()  # a step under way ends first; the loop takes no other
        await self._stop(sorted(self._running))
        await self.leases.stop(release=True)

    def _start(self, partition: int) -> None:
        stop = asyncio.Event()
        name = f"{self.runner.projection.name}-projection-p{partition}"
        self._running[partition] = (stop, asyncio.create_task(self.runner.run_partition(partition, stop), name=name))
        log.info("%s p%d: projecting (lease revision %s)", self.runner.projection.name, partition,
                 self.leases.revision(partition))  # fmt: skip

    async def _stop(self, partitions: list[int]) -> None:
        """Stop the partitions' projections at once; return when each one's last batch committed."""
        for partition in partitions:  # listed in projecting() until stopped
            self._running[partition][0].set()
        for partition in partitions:
            task = self._running[partition][1]
            await asyncio.wait([task])  # not `await task`: this loop's own cancellation must go on up
            self._running.pop(partition, None)
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise RuntimeError(f"{self.runner.projection.name} p{partition}: the projection died") from exc
            log.info("%s p%d: stopped projecting", self.runner.projection.name, partition)
