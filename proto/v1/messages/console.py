"""console: the operator's sign-in links for owners."""

from datetime import datetime

import msgspec

from proto.v1.messages.common import (
    ConsoleRefusalCode,
)


class IssueSignInLink(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Give the account's owner a fresh one-time console link (24 h, single use); with an email,
    the owner's email becomes that one (it is how they sign in afterwards)."""

    account_id: str
    email: str | None = None


class SignInLinkIssued(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    url: str
    expires_at: datetime
    email: str | None = None


class ConsoleCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: ConsoleRefusalCode
    message: str
    field: str | None = None
