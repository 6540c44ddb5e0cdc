"""Several ingress instances: each one's directory follows the whole log of account events, and
one of them at a time writes the ingress projection to Postgres.

The ingress projection (projection.py) has one durable consumer per partition. Shared by two
instances, each event would reach one of them only: the other's directory would never learn of
an account or a multiplier and would refuse that account's usage (400) or price it at an old
multiplier, and two runners on one consumer see each other's deliveries as lost ones. So:

* each instance reads every account event itself into its directory, with an ephemeral ordered
  consumer (libs/eventlog/follower.py: in memory, one replica, gone with the instance), from the
  checkpoint its directory was loaded at (Directory.apply is idempotent: the overlap with the load
  is harmless);
* while several instances run, usage is priced only once the follower has applied every account
  event stored before the request (`synced`: one consumer-info round trip), so a multiplier set
  through one instance prices usage posted to another at once;
* the projection (the Postgres copy the directory is loaded from at start) runs in the instance
  that holds the lease `owner.ingress-projection.0` (libs/leases.py): another instance takes it
  over within seconds when that one dies, and an instance that loses the lease (NATS away longer
  than the lease) pauses its runner until it holds it again.
"""

import logging
from collections.abc import Awaitable, Callable

from libs.eventlog.follower import LogFollower
from libs.eventlog.follower import loaded_from as loaded_from
from libs.leader import leader_fence
from libs.leases import PartitionLeases, held
from libs.runtime import Runtime
from services.ingress.projection import IngressProjection

log = logging.getLogger(__name__)
LEASE_S = 3.0
CHECK_S = 0.2


def sync_when_several(follower: LogFollower, leases: PartitionLeases) -> Callable[[], Awaitable[None]]:
    """The directory's sync: a barrier on the follower while other ingress instances are members of
    the lease bucket, nothing while this one is alone (its own changes it applies at once)."""

    async def sync() -> None:
        if leases.members > 1:
            await follower.synced()

    return sync


async def project_while_owner(runtime: Runtime, projection: IngressProjection, leases: PartitionLeases) -> None:
    """Start the projection once this instance holds the lease; pause it while it does not."""
    await held(leases, True, every_s=CHECK_S)
    log.info("ingress projection: runs in this instance (%s)", leases.instance)
    runner = await runtime.project(projection, fence=leader_fence(leases))
    while True:
        await held(leases, False, every_s=CHECK_S)
        log.warning("ingress projection: lease lost; paused until it is held again")
        async with runner.pause.paused(timeout_s=86400):
            await held(leases, True, every_s=CHECK_S)
        log.info("ingress projection: lease held again; resumed")
