"""quota.check and quota.status over NATS request/reply against the running quota service."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from libs.eventlog.publisher import EventPublisher
from libs.pricing.money import MICRO
from proto.v1 import QuotaCheck, QuotaDecision, UsageRecorded, encode, subjects
from tests.integration.conftest import quota_status
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


async def check(stack: Stack, account_id: str, estimate: int, reservation_id: str | None = None) -> QuotaDecision:
    nc = await stack.nats()
    try:
        request = QuotaCheck(
            account_id=account_id,
            reservation_id=reservation_id or uuid.uuid4().hex,
            model="deepseek/deepseek-chat",
            estimated_flows_micros=estimate,
        )
        reply = await nc.request(subjects.QUOTA_CHECK, encode(request), timeout=2)
        return msgspec.json.decode(reply.data, type=QuotaDecision)
    finally:
        await nc.close()


async def test_unknown_account_is_refused(stack: Stack) -> None:
    decision = await check(stack, "acc_nobody", MICRO)
    assert not decision.admitted and decision.reason == "unknown_account"


async def test_reservations_hold_room_until_usage_arrives(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    await eventually(lambda: _known(stack, account_id))
    # Free: 5 Flows per 5 h. Two reservations of 2.5 Flows fill it; the third call must wait.
    first = await check(stack, account_id, 2_500_000, "r1")
    second = await check(stack, account_id, 2_500_000, "r2")
    third = await check(stack, account_id, 1, "r3")
    assert first.admitted and first.billing_mode == "subscription" and first.flows_remaining_micros == 2_500_000
    assert second.admitted and second.flows_remaining_micros == 0
    assert not third.admitted and third.reason == "quota_exhausted" and third.retry_after_s == 1
    # The first call's usage arrives (as the gateway publishes it, with its reservation id):
    # the reservation is released and the actual cost counted instead.
    nc = await stack.nats()
    try:
        publisher = EventPublisher(nc, stack.settings.stream)
        await publisher.start()
        await publisher.publish(
            [
                UsageRecorded(
                    event_id=uuid.uuid4().hex,
                    account_id=account_id,
                    occurred_at=datetime.now(UTC),
                    model="deepseek/deepseek-chat",
                    input_tokens=10,
                    output_tokens=10,
                    billing_mode="subscription",
                    usd_cost_micros=10,
                    flows_micros=20_000,
                    usd_per_flow="5/198",
                    multiplier="1",
                    reservation_id="r1",
                    source="gateway",
                )
            ]
        )
    finally:
        await nc.close()

    async def released() -> bool:
        return (await quota_status(stack, account_id)).window_5h.reserved_flows_micros == 2_500_000

    await eventually(released)
    assert (await check(stack, account_id, 1, "r4")).admitted


async def _known(stack: Stack, account_id: str) -> bool:
    return (await quota_status(stack, account_id)).known


async def test_exhausted_window_refuses_with_retry_after_until_it_resets(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    opened = datetime.now(UTC) - timedelta(hours=4, minutes=30)
    # 5.9 Flows of usage, in a window opened 4.5 hours ago: it resets in 30 minutes.
    heavy = usage_event(
        account_id,
        model="z-ai/glm-4.7",
        input_tokens=1_000_000,
        output_tokens=200_000,
        occurred_at=opened.isoformat(),
    )
    assert (await stack.post_usage([heavy]))[0] == 202

    async def over_cap() -> bool:
        quota = await quota_status(stack, account_id)
        return quota.window_5h.used_flows_micros > quota.window_5h.limit_flows_micros

    await eventually(over_cap)  # (polls status, not check: every check counts against the RPM limit)
    decision = await check(stack, account_id, MICRO)
    assert decision.reason == "quota_exhausted"
    assert decision.window_resets_at == opened.replace(microsecond=opened.microsecond) + timedelta(hours=5)
    assert 29 * 60 <= (decision.retry_after_s or 0) <= 30 * 60
    quota = await quota_status(stack, account_id)
    assert quota.window_5h.used_flows_micros > quota.window_5h.limit_flows_micros


async def test_exhausted_week_refuses_until_the_week_resets(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    now = datetime.now(UTC)
    # Ten heavy calls across six days, each in its own 5 h window: the week (50.4) runs out.
    events = [
        usage_event(
            account_id,
            model="z-ai/glm-4.7",
            input_tokens=1_000_000,
            output_tokens=200_000,
            occurred_at=(now - timedelta(days=6) + timedelta(hours=6 * i)).isoformat(),
        )
        for i in range(10)
    ]
    assert (await stack.post_usage(events))[0] == 202

    async def week_over_cap() -> bool:
        quota = await quota_status(stack, account_id)
        return quota.weekly.used_flows_micros >= quota.weekly.limit_flows_micros

    await eventually(week_over_cap)
    decision = await check(stack, account_id, MICRO)
    assert decision.reason == "quota_exhausted"
    week_resets = datetime.fromisoformat(events[0]["occurred_at"]) + timedelta(days=7)
    assert abs(decision.retry_after_s - (week_resets - now).total_seconds()) < 60
    quota = await quota_status(stack, account_id)
    assert quota.window_5h.used_flows_micros == 0  # the 5 h window is closed: only the week blocks
    assert quota.weekly.used_flows_micros >= quota.weekly.limit_flows_micros


async def test_concurrent_checks_cannot_run_far_past_the_cap(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    await eventually(lambda: _known(stack, account_id))
    # Nearly empty window: 4.695 of 5 Flows used; each check below reserves 0.3.
    usage = usage_event(account_id, model="z-ai/glm-4.7", input_tokens=100_000, output_tokens=26_500)
    assert (await stack.post_usage([usage]))[0] == 202

    async def used() -> bool:
        return (await quota_status(stack, account_id)).window_5h.used_flows_micros > 4 * MICRO

    await eventually(used)
    decisions = await asyncio.gather(*(check(stack, account_id, 300_000) for _ in range(8)))
    assert sum(d.admitted for d in decisions) == 2


async def test_plan_models_and_rpm_are_checked_before_the_windows(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    await eventually(lambda: _known(stack, account_id))
    nc = await stack.nats()
    try:

        async def ask(model: str) -> QuotaDecision:
            request = QuotaCheck(account_id=account_id, reservation_id=uuid.uuid4().hex, model=model,
                                 estimated_flows_micros=1)  # fmt: skip
            reply = await nc.request(subjects.QUOTA_CHECK, encode(request), timeout=2)
            return msgspec.json.decode(reply.data, type=QuotaDecision)

        assert (await ask("anthropic/claude-sonnet-4.5")).reason == "model_not_in_plan"  # Free plan
        assert (await ask("no/such-model")).reason == "unknown_model"
        decisions = [await ask("deepseek/deepseek-chat") for _ in range(14)]
    finally:
        await nc.close()
    admitted = [d for d in decisions if d.admitted]
    assert len(admitted) == 10  # Free: 10 RPM
    first = admitted[0].rate_limit
    assert first is not None and (first.limit, first.remaining) == (10, 9)
    refused = decisions[10]
    assert refused.reason == "rate_limit_exceeded" and refused.retry_after_s is not None
    assert 1 <= refused.retry_after_s <= 6
    assert admitted[0].usd_per_flow == "5/198" and admitted[0].multiplier == "1"
