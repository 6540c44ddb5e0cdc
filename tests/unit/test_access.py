"""Who may do what on the account API (services/ingress/access.py): scopes by credential and
method, suspension, and the per-account limit on changes. Pure: no servers."""

from datetime import UTC, datetime

import pytest

from libs.web import ApiError
from proto.v1 import KeyView
from services.ingress.access import authorize, needed_scope, of_key

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
