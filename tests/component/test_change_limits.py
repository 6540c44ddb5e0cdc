"""The account API's change limit in Postgres (services/ingress/changes.py): a burst of per_minute
changes, then one every 60/per_minute s, per account, and one budget for every ingress instance."""

from datetime import timedelta

import asyncpg
import pytest

from services.ingress.access import RateLimited
from services.ingress.changes import ChangeLimiter
from tests.component.conftest import T0


async def test_changes_come_in_a_burst_then_refill_per_account(pool: asyncpg.Pool) -> None:
    limiter = ChangeLimiter(pool, per_minute=6)
    for _ in range(6):
        await limiter.take("acc_burst_1", T0)
    with pytest.raises(RateLimited) as limited:
        await limiter.take("acc_burst_1", T0)
    assert limited.value.status == 429 and limited.value.retry_after_s == 10
    assert limited.value.response().headers["retry-after"] == "10"
    await limiter.take("acc_burst_2", T0)  # another account is not slowed by the first one
    with pytest.raises(RateLimited) as limited:
        await limiter.take("acc_burst_1", T0 + timedelta(seconds=9))
    assert limited.value.retry_after_s == 1
    await limiter.take("acc_burst_1", T0 + timedelta(seconds=10))  # one every 60/6 s once the burst is spent
    with pytest.raises(RateLimited):
        await limiter.take("acc_burst_1", T0 + timedelta(seconds=10))
    for _ in range(6):  # minutes later the whole burst is back, not more
        await limiter.take("acc_burst_1", T0 + timedelta(minutes=5))
    with pytest.raises(RateLimited):
        await limiter.take("acc_burst_1", T0 + timedelta(minutes=5))


async def test_every_ingress_instance_spends_from_the_one_budget(pool: asyncpg.Pool) -> None:
    """Two limiters on one database (two ingress instances): alternating between them gives the
    account per_minute changes, not twice that."""
    first, second = ChangeLimiter(pool, per_minute=4), ChangeLimiter(pool, per_minute=4)
    allowed = 0
    for n in range(10):
        try:
            await (first if n % 2 else second).take("acc_shared", T0)
            allowed += 1
        except RateLimited:
            pass
    assert allowed == 4


async def test_a_refused_change_spends_nothing(pool: asyncpg.Pool) -> None:
    limiter = ChangeLimiter(pool, per_minute=2)
    await limiter.take("acc_refused", T0)
    await limiter.take("acc_refused", T0)
    for _ in range(5):  # refusals do not push the next allowed change further out
        with pytest.raises(RateLimited):
            await limiter.take("acc_refused", T0 + timedelta(seconds=1))
    await limiter.take("acc_refused", T0 + timedelta(seconds=30))
