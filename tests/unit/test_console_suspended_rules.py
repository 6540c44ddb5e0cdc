"""A console session carries its account's suspension (services/ingress/access.py): the owner of a
suspended account reads, and changes nothing; a session of an account in good standing does both."""

import pytest

from libs.web import ApiError
from services.ingress.access import authorize, of_console

CHANGES = ["POST", "PUT", "PATCH", "DELETE"]


def test_a_suspended_owner_reads_but_every_change_is_account_suspended() -> None:
    owner = of_console("acc_1", suspended=True)
    for method in ["GET", "HEAD"]:
        authorize(owner, method)
    for method in CHANGES:
        with pytest.raises(ApiError) as refused:
            authorize(owner, method)
        assert (refused.value.status, refused.value.code) == (403, "account_suspended")


def test_an_owner_in_good_standing_reads_and_changes() -> None:
    owner = of_console("acc_1", suspended=False)
    for method in ["GET", *CHANGES]:
        authorize(owner, method)
