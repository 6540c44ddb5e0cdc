"""Requests for an account go to the quota instance that owns its partition
(services/quota/partitions.py): the partition the gateway computes for an account must be the one
the stream's subject transform stores the account's events in, or the owner that admits a call
would not be the one that projects its usage. Checked against a real nats-server's transform."""

import uuid

import pytest
from nats.aio.client import Client
from nats.js import api

from libs.eventlog import subjects

pytestmark = pytest.mark.connected


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
