"""Property: whatever the order, lateness, duplication or batching of usage, the projection's
windows equal a brute-force recomputation from the list of events (through the real servers)."""

import asyncio
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from services.quota.domain.periods import Segment, period_at
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK, Usage, chain
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected
CATALOG = load_catalog()
MODELS = ["deepseek/deepseek-chat", "z-ai/glm-4.7", "xiaomi/mimo-v2-flash"]
# Offsets back from "now", in minutes: dense within hours, some exactly 5 h / 7 days apart.
offsets = st.one_of(
    st.integers(min_value=0, max_value=8 * 24 * 60 - 10),
    st.integers(min_value=0, max_value=30).map(lambda k: k * 300),
    st.sampled_from([7 * 24 * 60, 7 * 24 * 60 + 1, 7 * 24 * 60 - 1]),
)
usage_lists = st.lists(
    st.tuples(offsets, st.sampled_from(MODELS), st.integers(1, 50_000), st.integers(0, 20_000)),
    min_size=1,
    max_size=40,
)


def brute_force(events: list[dict], created_at: datetime) -> dict[str, list[tuple[datetime, int]]]:
    distinct = {e["event_id"]: e for e in events}.values()
    usages = sorted(Usage(datetime.fromisoformat(e["occurred_at"]), e["_flows"]) for e in distinct)
    monthly: dict[datetime, int] = defaultdict(int)
    segments = [Segment(created_at, "free", created_at, "")]
    for u in usages:
        monthly[period_at(segments, u.at).start] += u.flows
    return {
        "5h": [(w.start, w.flows) for w in chain(usages, FIVE_HOURS)],
        "week": [(w.start, w.flows) for w in chain(usages, ONE_WEEK)],
        "month": sorted(monthly.items()),
    }


async def projected(stack: Stack, account_id: str) -> dict[str, list[tuple[datetime, int]]]:
    conn = await stack.db()
    try:
        rows = await conn.fetch(
            "SELECT kind, started_at, flows_micros FROM quota.windows WHERE account_id = $1 ORDER BY started_at",
            account_id,
        )
    finally:
        await conn.close()
    result: dict[str, list[tuple[datetime, int]]] = {"5h": [], "week": [], "month": []}
    for row in rows:
        result[row["kind"]].append((row["started_at"], row["flows_micros"]))
    return result


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usages=usage_lists, seed=st.integers(0, 2**32 - 1))
def test_windows_equal_brute_force(stack: Stack, usages: list, seed: int) -> None:
    asyncio.run(_run(stack, usages, random.Random(seed)))


async def _run(stack: Stack, usages: list, rng: random.Random) -> None:
    account = await stack.create_account("property")
    account_id = account["account_id"]
    now = datetime.now(UTC).replace(microsecond=0)
    events = []
    for offset, model, tokens_in, tokens_out in usages:
        event = {
            "event_id": uuid.uuid4().hex,
            "account_id": account_id,
            "model": model,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "billing_mode": "subscription",
            "occurred_at": (now - timedelta(minutes=offset)).isoformat(),
        }
        event["_flows"] = price_call(
            CATALOG.models[model],
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            usd_per_flow=CATALOG.default_usd_per_flow,
            multiplier=Fraction(1),
        ).flows_micros
        events.append(event)
    # Out of order, duplicated, in random batches.
    delivery = events + rng.sample(events, k=rng.randint(0, len(events)))
    rng.shuffle(delivery)
    while delivery:
        size = rng.randint(1, 10)
        batch, delivery = delivery[:size], delivery[size:]
        unique = list({e["event_id"]: {k: v for k, v in e.items() if k != "_flows"} for e in batch}.values())
        status, body = await stack.post_usage(unique)
        assert status == 202, body
    conn = await stack.db()
    try:
        created_at = await eventually(
            lambda: conn.fetchval("SELECT created_at FROM quota.accounts WHERE account_id = $1", account_id)
        )
    finally:
        await conn.close()
    want = brute_force(events, created_at)

    async def equal() -> bool:
        return await projected(stack, account_id) == want

    await eventually(equal, within=20)
