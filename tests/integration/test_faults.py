"""Crashes and outages: the projection ends exact, loses nothing, and dead-letters poison."""

import asyncio
import random
import uuid
from datetime import UTC, datetime
from fractions import Fraction

import msgspec
import pytest

from libs.localservers import LocalPostgres
from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from proto.v1 import UsageRecorded, encode
from tests.integration.conftest import all_known
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected
CATALOG = load_catalog()
ONE_CALL = price_call(
    CATALOG.models["deepseek/deepseek-chat"],
    input_tokens=1000,
    output_tokens=500,
    usd_per_flow=CATALOG.default_usd_per_flow,
    multiplier=Fraction(1),
).flows_micros


async def totals(stack: Stack, account_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per account: (usage rows, Flows in its weekly windows), straight from the projection."""
    conn = await stack.db()
    try:
        rows = await conn.fetch(
            """SELECT a.account_id,
                      (SELECT count(*) FROM quota.usage u WHERE u.account_id = a.account_id) AS calls,
                      (SELECT coalesce(sum(flows_micros), 0) FROM quota.windows w
                        WHERE w.account_id = a.account_id AND w.kind = 'week') AS flows
               FROM unnest($1::text[]) AS a(account_id)""",
            account_ids,
        )
        return {r["account_id"]: (r["calls"], r["flows"]) for r in rows}
    finally:
        await conn.close()


async def post_until_accepted(stack: Stack, events: list[dict]) -> None:
    """What a metering client does: retry a batch until it is stored (duplicates are harmless)."""
    for _ in range(600):
        try:
            status, body = await stack.post_usage(events)
        except OSError:
            status, body = 0, None
        if status == 202:
            return
        assert status in (0, 503), body
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch never accepted: {status} {body}")


async def steady_load(stack: Stack, sent: list[list[dict]]) -> None:
    """The batches one after the other, as a metering client under way would send them."""
    for batch in sent:
        await post_until_accepted(stack, batch)
        await asyncio.sleep(0.02)


async def accounts(stack: Stack, n: int) -> list[str]:
    return [(await stack.create_account(f"fault-{i}"))["account_id"] for i in range(n)]


def batches(account_ids: list[str], count: int, size: int) -> list[list[dict]]:
    return [[usage_event(random.choice(account_ids)) for _ in range(size)] for _ in range(count)]


async def expect_exact(stack: Stack, sent: list[list[dict]], account_ids: list[str]) -> None:
    want = {a: [0, 0] for a in account_ids}
    for batch in sent:
        for event in batch:
            want[event["account_id"]][0] += 1
            want[event["account_id"]][1] += ONE_CALL
    expected = {a: (c, f) for a, (c, f) in want.items()}

    async def exact() -> bool:
        return await totals(stack, account_ids) == expected

    await eventually(exact, within=60)


@pytest.mark.parametrize("failpoint", ["after_commit:2", "before_commit:2"])
async def test_projector_killed_between_commit_and_ack_or_mid_batch(stack: Stack, failpoint: str) -> None:
    account_ids = await accounts(stack, 5)
    await eventually(lambda: all_known(stack, account_ids))
    stack.quota.stop()
    sent = batches(account_ids, 6, 300)
    for batch in sent:
        await post_until_accepted(stack, batch)
    # Small batches so that the kill lands after some, not all, of the backlog is applied.
    stack.quota.env["FLOWPLAN_PROJECTION_BATCH"] = "250"
    try:
        # It may die before it even listens: the backlog is applied from the start.
        stack.quota.start({"FLOWPLAN_FAILPOINT": failpoint}, wait=False)
        assert await asyncio.to_thread(stack.quota.wait_exit) == 137
    finally:
        del stack.quota.env["FLOWPLAN_PROJECTION_BATCH"]
    assert f"failpoint {failpoint.split(':')[0]}" in stack.quota.log()
    await asyncio.to_thread(stack.quota.start)
    await expect_exact(stack, sent, account_ids)


async def test_projector_killed_repeatedly_under_load(stack: Stack) -> None:
    account_ids = await accounts(stack, 8)
    sent = batches(account_ids, 30, 100)

    producer = asyncio.create_task(steady_load(stack, sent))
    for _ in range(3):
        await asyncio.sleep(0.3)
        stack.quota.kill()
        await asyncio.to_thread(stack.quota.start)
    await producer
    await expect_exact(stack, sent, account_ids)


async def test_postgres_stopped_and_restarted_under_load_loses_nothing(stack: Stack, postgres: LocalPostgres) -> None:
    account_ids = await accounts(stack, 4)
    sent = batches(account_ids, 40, 50)

    producer = asyncio.create_task(steady_load(stack, sent))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(postgres.stop, "fast")
    await asyncio.sleep(2)
    await asyncio.to_thread(postgres.start)
    await producer
    await expect_exact(stack, sent, account_ids)
    status, _ = await stack.http("GET", "/healthz")
    assert status == 200


async def test_poison_events_go_to_the_dead_letter_stream_and_the_consumer_goes_on(stack: Stack) -> None:
    account_id = (await stack.create_account())["account_id"]
    await eventually(lambda: all_known(stack, [account_id]))
    nc = await stack.nats()
    js = nc.jetstream()
    try:
        garbage = await js.publish(
            f"flowplan.events.usage.{account_id}.UsageRecorded", b'{"type": "UsageRecorded", "no'
        )
        orphan = UsageRecorded(
            event_id=uuid.uuid4().hex,
            account_id="acc_never_created",
            occurred_at=datetime.now(UTC),
            model="deepseek/deepseek-chat",
            input_tokens=1,
            output_tokens=1,
            billing_mode="subscription",
            usd_cost_micros=1,
            flows_micros=1,
            usd_per_flow="5/198",
            multiplier="1",
        )
        unknown = await js.publish("flowplan.events.usage.acc_never_created.UsageRecorded", encode(orphan))
        good = usage_event(account_id)
        assert (await stack.post_usage([good]))[0] == 202
        await expect_exact(stack, [[good]], [account_id])

        dead: dict[int, str] = {}

        async def dead_lettered() -> bool:
            sub = await js.pull_subscribe("flowplan.dlq.quota", stream=stack.settings.dlq_stream)
            try:
                for msg in await sub.fetch(10, timeout=1):
                    dead[int(msg.headers["Flowplan-Stream-Seq"])] = msg.headers["Flowplan-Error"]
                    await msg.ack()
            except Exception:
                pass
            finally:
                await sub.unsubscribe()
            return {garbage.seq, unknown.seq} <= set(dead)

        await eventually(dead_lettered)
        assert "DecodeError" in dead[garbage.seq] or "ValidationError" in dead[garbage.seq]
        assert "UnknownAccount" in dead[unknown.seq]
    finally:
        await nc.close()
    assert msgspec  # the DLQ keeps the original bytes; see Flowplan-* headers


async def exact_after_a_restart_with(stack: Stack, failpoint: str, batches_of: tuple[int, int]) -> str:
    """quota restarted with the failpoint armed, then a steady load on three accounts, every total
    exact in the end: quota's log."""
    account_ids = await accounts(stack, 3)
    await eventually(lambda: all_known(stack, account_ids))
    stack.quota.stop()
    await asyncio.to_thread(stack.quota.start, {"FLOWPLAN_FAILPOINT": failpoint})
    sent = batches(account_ids, *batches_of)
    await steady_load(stack, sent)
    await expect_exact(stack, sent, account_ids)
    return stack.quota.log()


async def test_a_delivery_lost_in_transit_is_fetched_again_never_acked_past(stack: Stack) -> None:
    """A batch that never reaches the projector (a NATS node or connection lost while it was in
    transit, as when a cluster node dies: test_stream_replicas.py) must not be acked past by the
    next one (AckPolicy.ALL): the projector sees the jump in the consumer's sequence and fetches
    again from its checkpoint."""
    log = await exact_after_a_restart_with(stack, "lose_delivery:2", batches_of=(12, 40))
    assert "failpoint lose_delivery: fired" in log
    assert "a delivery was lost; resuming at the checkpoint" in log


async def test_a_quota_partition_fenced_as_its_projection_started_is_taken_again(stack: Stack) -> None:
    """Under load a lease renewal can come late just as a take-over starts the partition's projection:
    that start is fenced, and ends. quota takes the partition again while it holds the lease, then
    projects and admits for it, rather than wait for ever on a projection that no longer runs."""
    log = await exact_after_a_restart_with(stack, "lease_lost_at_start", batches_of=(4, 20))
    assert "failpoint lease_lost_at_start: fired" in log
    # Taken again from the take-over still waiting for it, or from the run loop once it was over.
    assert "its projection stopped before it caught up" in log or "taken again while held" in log
