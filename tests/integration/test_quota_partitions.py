"""Requests for an account go to the quota instance that owns its partition
(services/quota/partitions.py): the partition the gateway computes for an account must be the one
the stream's subject transform stores the account's events in, or the owner that admits a call
would not be the one that projects its usage. Checked against a real nats-server's transform."""

import uuid

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.js import api

from libs.eventlog import subjects
from libs.eventlog.runner import ProjectionRunner
from libs.leases import PartitionLeases
from libs.pricing.catalog import load_catalog
from libs.settings import Settings
from services.quota.partitions import QuotaPartitions
from services.quota.projection import QuotaProjection
from services.quota.state import QuotaState
from tests.lost_cancel import as_a_reply_comes

pytestmark = pytest.mark.connected
CATALOG = load_catalog()


@pytest.mark.parametrize("partitions", [4, 16])
async def test_partition_for_is_the_stream_transforms_partition(nc: Client, partitions: int) -> None:
    js = nc.jetstream()
    name = f"T_{uuid.uuid4().hex[:8]}"
    prefix = f"t{uuid.uuid4().hex[:6]}"
    dest = subjects.transform_destination(partitions).replace(subjects.STORED_PREFIX, f"{prefix}.p", 1)
    await js.add_stream(api.StreamConfig(
        name=name, subjects=[f"{prefix}.events.>"],
        subject_transform=api.SubjectTransform(src=f"{prefix}.events.*.*.*", dest=dest),
    ))  # fmt: skip
    accounts = [f"acc_{uuid.uuid4().hex[:12]}" for _ in range(200)] + ["_system", "a", "Z-9_x"]
    try:
        for account in accounts:
            await js.publish(f"{prefix}.events.usage.{account}.UsageRecorded", b"{}", stream=name)
        seen = {}
        for seq in range(1, len(accounts) + 1):
            msg = await js.get_msg(name, seq)
            account = (msg.subject or "").split(".")[4]
            seen[account] = int((msg.subject or "").split(".")[2])
        assert seen == {account: subjects.partition_for(account, partitions) for account in accounts}
        assert len(set(seen.values())) == partitions  # every partition used: the check has teeth
    finally:
        await js.delete_stream(name)


async def test_letting_a_partition_go_ends_its_take_over_whose_cancel_was_lost(settings: Settings) -> None:
    """A partition let go while its take-over runs (lost, or desired elsewhere) cancels the take-over.
    One cancelled as a NATS reply came in went on (Python 3.11's wait_for: libs/cancelling.py) to
    subscribe to the partition's subjects and mark it ready after it was let go; let-go waited for it."""
    nc = await nats.connect(settings.nats_url)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        state = QuotaState(CATALOG.default_usd_per_flow, CATALOG.insider_multiplier)
        leases = PartitionLeases(nc.jetstream(), f"quota-{uuid.uuid4().hex[:6]}", "a", settings.partitions,
                                 hand_over=True)  # fmt: skip
        projection = QuotaProjection(state, partitions=settings.partitions)
        runner = ProjectionRunner(projection, pool, nc.jetstream(), stream=settings.stream,
                                  partitions=settings.partitions, fence=leases.revision)  # fmt: skip
        partitions = QuotaPartitions(nc, leases, runner, state, pool, "quota", stream=settings.stream,
                                     heartbeat_interval_s=1.0, listening_since=0.0)  # fmt: skip
        taking = await as_a_reply_comes()
        partitions._taking[0] = taking  # as run() keeps a take-over under way
        await partitions._let_go(0)
        assert taking.cancelled() and 0 not in partitions.ready()
    finally:
        await pool.close()
        await nc.close()
