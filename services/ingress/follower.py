"""Several ingress instances: each one's directory follows the whole log of account events, and
one of them at a time writes the ingress projection to Postgres.

The ingress projection (projection.py) has one durable consumer per partition. Shared by two
instances, each event would reach one of them only: the other's directory would never learn of
an account or a multiplier and would refuse that account's usage (400) or price it at an old
multiplier, and two runners on one consumer see each other's deliveries as lost ones. So:

* each instance reads every account event itself into its directory, with an ephemeral ordered
  consumer (in memory, one replica, gone with the instance), from the checkpoint its directory
  was loaded at (Directory.apply is idempotent: the overlap with the load is harmless);
* while several instances run, usage is priced only once the follower has applied every account
  event stored before the request (`synced`: one consumer-info round trip), so a multiplier set
  through one instance prices usage posted to another at once;
* the projection (the Postgres copy the directory is loaded from at start) runs in the instance
  that holds the lease `owner.ingress-projection.0` (libs/leases.py): another instance takes it
  over within seconds when that one dies, and an instance that loses the lease (NATS away longer
  than the lease) pauses its runner until it holds it again.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.js
from nats.aio.msg import Msg
from nats.js import api

from libs.eventlog import subjects
from libs.eventlog.follower import loaded_from as loaded_from
from libs.leases import PartitionLeases
from libs.runtime import Runtime
from proto.v1 import decode_event
from services.ingress.directory import Directory
from services.ingress.projection import IngressProjection

log = logging.getLogger(__name__)
LEASE_S = 3.0
CHECK_S = 0.2
SYNC_TIMEOUT_S = 2.0


class DirectoryFollower:
    def __init__(self, js: nats.js.JetStreamContext, stream: str, directory: Directory) -> None:
        self._js, self._stream, self._directory = js, stream, directory
        self._sub: nats.js.JetStreamContext.PushSubscription | None = None
        self.applied = 0
        self.applied_seq = 0

    async def start(self, after_seq: int) -> None:
        """Follow the account events stored after after_seq."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
        )
        self._sub = await self._js.subscribe(
            f"{subjects.STORED_PREFIX}.*.account.>",
            stream=self._stream,
            config=config,
            ordered_consumer=True,
            cb=self._on_event,
        )
        log.info("directory follows the account events from sequence %d", after_seq + 1)

    async def _on_event(self, msg: Msg) -> None:
        try:
            self._directory.apply(decode_event(msg.data))
            self.applied += 1
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # the projection dead-letters it; nothing for the directory
        self.applied_seq = msg.metadata.sequence.stream

    async def synced(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        """Return once every account event stored before the call is applied here (the follower's
        consumer has nothing pending and all it delivered was applied): one JetStream API round
        trip when it is so. Past the timeout, go on with what is known (logged)."""
        assert self._sub is not None
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self._sub.consumer_info()
            delivered = info.delivered.stream_seq if info.delivered is not None else 0
            if not info.num_pending and self.applied_seq >= (delivered or 0):
                return
            if time.monotonic() > deadline:
                log.warning("directory: %s account events not applied after %.1f s", info.num_pending, timeout_s)
                return
            await asyncio.sleep(0.005)


def sync_when_several(follower: DirectoryFollower, leases: PartitionLeases) -> Callable[[], Awaitable[None]]:
    """The directory's sync: a barrier on the follower while other ingress instances are members of
    the lease bucket, nothing while this one is alone (its own changes it applies at once)."""

    async def sync() -> None:
        if leases.members > 1:
            await follower.synced()

    return sync


async def held(leases: PartitionLeases, want: bool) -> None:
    """Return once holding the lease is `want` (polled: a lease also ends by time passing)."""
    while True:
        if leases.owns(0) == want:
            return
        await asyncio.sleep(CHECK_S)


async def project_while_owner(runtime: Runtime, projection: IngressProjection, leases: PartitionLeases) -> None:
    """Start the projection once this instance holds the lease; pause it while it does not."""
    await held(leases, True)
    log.info("ingress projection: runs in this instance (%s)", leases.instance)
    runner = await runtime.project(projection)
    while True:
        await held(leases, False)
        log.warning("ingress projection: lease lost; paused until it is held again")
        async with runner.pause.paused(timeout_s=86400):
            await held(leases, True)
        log.info("ingress projection: lease held again; resumed")
