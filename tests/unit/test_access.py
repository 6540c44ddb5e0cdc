"""Who may do what on the account API (services/ingress/access.py): scopes by credential and
method, suspension, and the per-account limit on changes. Pure: no servers."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.web import ApiError
from proto.v1 import KeyView
from services.ingress.access import ChangeLimiter, RateLimited, authorize, needed_scope, of_key

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
CHANGES = ["POST", "PUT", "PATCH", "DELETE"]


def key(kind: str, suspended: bool = False) -> KeyView:
    return KeyView(
        id="key_1", account_id="acc_1", name="k", kind=kind, prefix="sk-", last4="abcd", created_at=T0,
        account_suspended=suspended,
    )  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("kind", ["subscription", "payg"])
def test_model_keys_read_and_never_change(kind: str) -> None:
    principal = of_key(key(kind))
    authorize(principal, "GET")
    for method in CHANGES:
        with pytest.raises(ApiError) as refused:
            authorize(principal, method)
        assert (refused.value.status, refused.value.code) == (403, "insufficient_scope")
        assert "management key" in refused.value.message


def test_a_management_key_reads_and_changes() -> None:
    principal = of_key(key("management"))
    for method in ["GET", *CHANGES]:
        authorize(principal, method)
    assert needed_scope("get") == "read" and needed_scope("DELETE") == "manage"


@pytest.mark.parametrize("kind", ["subscription", "payg", "management"])
def test_a_suspended_accounts_keys_get_account_suspended_even_to_read(kind: str) -> None:
    for method in ["GET", "POST"]:
        with pytest.raises(ApiError) as refused:
            authorize(of_key(key(kind, suspended=True)), method)
        assert (refused.value.status, refused.value.code) == (403, "account_suspended")


def test_changes_per_minute_come_in_a_burst_then_refill_per_account() -> None:
    limiter = ChangeLimiter(per_minute=6)
    for _ in range(6):
        limiter.take("acc_1", T0)
    with pytest.raises(RateLimited) as limited:
        limiter.take("acc_1", T0)
    assert limited.value.status == 429 and limited.value.retry_after_s == 10
    assert limited.value.response().headers["retry-after"] == "10"
    limiter.take("acc_2", T0)  # another account is not slowed by the first one
    with pytest.raises(RateLimited):
        limiter.take("acc_1", T0 + timedelta(seconds=9))
    limiter.take("acc_1", T0 + timedelta(seconds=10))  # one change every 60/6 s once the burst is spent
    with pytest.raises(RateLimited):
        limiter.take("acc_1", T0 + timedelta(seconds=10))
    for _ in range(6):  # a minute later the whole burst is back, not more
        limiter.take("acc_1", T0 + timedelta(minutes=5))
    with pytest.raises(RateLimited):
        limiter.take("acc_1", T0 + timedelta(minutes=5))


def test_idle_accounts_are_forgotten_so_the_limiter_stays_bounded() -> None:
    limiter = ChangeLimiter(per_minute=60)
    limiter.MAX_ACCOUNTS = 10
    for n in range(10):
        limiter.take(f"acc_{n}", T0)
    limiter.take("acc_new", T0 + timedelta(minutes=2))  # the others refilled long ago
    assert len(limiter._buckets) == 1
