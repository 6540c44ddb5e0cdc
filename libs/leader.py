"""One instance of a service at a time decides (answers the commands) while the others stand by: the
holder of a lease `owner.<service>-leader.0` (keys, billing, refund). Separate from the partition
leases of their projections (`owner.<service>.<partition>`)."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from libs.leases import PartitionLeases, held
from libs.leasethread import LeaseThread

log = logging.getLogger(__name__)
LEADER_LEASE_S = 3.0


def leader_leases(home: LeaseThread, service: str) -> PartitionLeases:
    """The service's leader lease, renewed on the process's lease thread."""
    return home.leases(f"{service}-leader", 1, lease_s=LEADER_LEASE_S, rebalance=False)


async def lead(
    leases: PartitionLeases, begin: Callable[[], Awaitable[None]], leading: asyncio.Event | None = None
) -> None:
    """Once this instance holds the leader lease, begin (project, answer the commands, resume what
    the previous leader left); when a renewal finds another holder, raise: the process exits
    (crash-only, run it as a spawned task) and its supervisor starts it again as a standby. A
    renewal merely late (an event loop starved of CPU) is not a loss: the key's revision proves
    nobody else held it. The commands are not fenced by time; the projection's commits are fenced by the
    lease's revision (`leader_fence`; libs/eventlog/runner.py), and so are the refund desk's decisions
    (libs/fencing.py): a leader frozen past its lease commits nothing once the next one leads.
    Returns when the lease was handed over by `leases.stop()` (a clean shutdown)."""
    await held(leases, True)
    log.info("%s: this instance (%s) leads", leases.service, leases.instance)
    await begin()
    if leading is not None:
        leading.set()
    while True:  # a renewal late under load (owns() false a moment) is not a loss
        if not leases.holds(0):
            break
        await asyncio.sleep(0.2)
    if leases.stopped:  # handed over by this instance's clean stop, whose other steps go on
        return
    raise RuntimeError(f"{leases.service}: the leader's lease was lost; exiting so that only one instance decides")


def leader_fence(leases: PartitionLeases) -> Callable[[int], int | None]:
    """The fencing token of every partition a leader projects: its leader lease's revision."""
    return lambda _partition: leases.revision(0)


async def until_leading(leading: asyncio.Event) -> None:
    """At start: wait until this instance leads, or until a lease held by another instance would
    have run out (a SIGKILLed predecessor's): the sole instance of a service serves /healthz only
    once it answers, as before; a standby serves it after these seconds."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(leading.wait(), LEADER_LEASE_S * 4 / 3 + 0.5)
