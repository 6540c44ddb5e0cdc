"""What the integration modules share: waits on the event log's consumers and dead letters, on
quota knowing accounts, and plans that load never exhausts. Modules import these from here, never
from one another's tests."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import nats.js
import pytest
from nats.aio.client import Client

from libs.eventlog.subjects import publish_subject
from libs.localservers import LocalNats
from proto.v1 import QuotaStatus, QuotaStatusRequest, UsageRecorded, encode, subjects
from tests.stack import ROOT, Stack


@pytest.fixture
async def nc(nats_server: LocalNats) -> AsyncIterator[Client]:
    """A client of the module's nats-server, for tests that talk to NATS without a stack."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def quota_status(stack: Stack, account_id: str) -> QuotaStatus:
    """quota.status of the account, asked over its own connection."""
    nc = await stack.nats()
    try:
        reply = await nc.request(subjects.QUOTA_STATUS, encode(QuotaStatusRequest(account_id=account_id)), timeout=2)
        return msgspec.json.decode(reply.data, type=QuotaStatus)
    finally:
        await nc.close()


async def publish_usage(js: nats.js.JetStreamContext, account: str, event_id: str | None = None) -> UsageRecorded:
    """One small priced call of the account's, straight into the log (no ingress): returned. Its
    event_id may be chosen first, for a test that must know it before a projection can see it."""
    event = UsageRecorded(
        event_id=event_id or uuid.uuid4().hex, account_id=account, occurred_at=datetime.now(UTC),
        model="deepseek/deepseek-chat", input_tokens=10, output_tokens=10, billing_mode="subscription",
        usd_cost_micros=10, flows_micros=20_000, usd_per_flow="5/198", multiplier="1",
    )  # fmt: skip
    await js.publish(publish_subject("usage", account, "UsageRecorded"), encode(event))
    return event


def out_of_reach_plans(workdir: Path) -> str:
    """A plans file whose RPM and caps steady load and long streams never reach: its path."""
    plans = json.loads((ROOT / "libs" / "catalog" / "plans.json").read_text())
    for plan in plans["plans"]:
        plan["rpm"] = 1_000_000
        plan["window_5h_flows"] = plan["weekly_flows"] = plan["monthly_flows"] = "1000000000"
    path = workdir / f"plans-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(plans))
    return str(path)


async def all_known(stack: Stack, account_ids: list[str]) -> bool:
    """Quota's projection has every one of the accounts."""
    conn = await stack.db()
    try:
        n = await conn.fetchval("SELECT count(*) FROM quota.accounts WHERE account_id = ANY($1)", account_ids)
        return bool(n == len(account_ids))
    finally:
        await conn.close()


async def dead_letters(stack: Stack) -> int:
    nc = await stack.nats()
    try:
        info = await nc.jetstream().stream_info(stack.settings.dlq_stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def settled(stack: Stack, within: float = 30.0) -> None:
    """Until every projection consumer has applied and acked all it was sent."""
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + within
        while True:
            consumers = await js.consumers_info(stack.settings.stream)
            if all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers):
                return
            assert asyncio.get_running_loop().time() < deadline, [
                (c.name, c.num_pending, c.num_ack_pending) for c in consumers
            ]
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
