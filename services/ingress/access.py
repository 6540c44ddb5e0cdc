"""Who may do what on the account API. Pure: no I/O.

A request carries one credential; it grants scopes. Reading the account's views (`GET`) needs
`read`, which every active key of the account has; any other method changes the account and
needs `manage`, which only a management key (`sk-mg-v1-`) has: model keys are pasted into
tools and CI and leak, so a leaked one reads but never changes anything. The owner signed in
to the console is another credential granting both (the console calls with a short-lived pass
for its session, libs/ownerpass.py), checked here the same way, suspension included (see
authorize).

Changes are also rate-limited per account (services/ingress/changes.py), so that one account
cannot flood the log or keep the keys service busy for everyone else: RateLimited is its refusal.
"""

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from libs.apikeys import MODEL_KINDS
from libs.web import ApiError
from proto.v1 import KeyView

Scope = Literal["read", "manage"]
Credential = Literal["model_key", "management_key", "console_session"]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """The account a request acts for, with what its credential allows."""

    account_id: str
    credential: Credential
    scopes: frozenset[Scope]
    suspended: bool = False


def needed_scope(method: str) -> Scope:
    return "read" if method.upper() in READ_METHODS else "manage"


def of_key(key: KeyView) -> Principal:
    if key.kind in MODEL_KINDS:
        return Principal(key.account_id, "model_key", frozenset({"read"}), key.account_suspended)
    return Principal(key.account_id, "management_key", frozenset({"read", "manage"}), key.account_suspended)


def of_console(account_id: str, suspended: bool) -> Principal:
    """The owner, through a console session: the owner's scope, like a management key."""
    return Principal(account_id, "console_session", frozenset({"read", "manage"}), suspended)


def authorize(principal: Principal, method: str) -> None:
    """Raise the 403 the request gets, if any: a suspended account, or a credential without the scope.

    A suspended account's keys may do nothing, not even read: keys leak, and a suspension is how a
    leaked or abused key is stopped. Its owner, signed in to the console with a password, may still
    read (usage, billing history, a refund's status: what they need to understand the suspension and
    contest it), but changes nothing: no key, no checkout, no refund, no Extra Usage."""
    if principal.suspended and (principal.credential != "console_session" or needed_scope(method) == "manage"):
        raise ApiError(403, "account_suspended", "this account is suspended; contact support", "Authorization")
    scope = needed_scope(method)
    if scope not in principal.scopes:
        raise ApiError(
            403,
            "insufficient_scope",
            f"{method} changes the account and needs a management key (sk-mg-v1-); "
            "model keys (sk-ss-v1-, sk-pg-v1-) may only read",
            "Authorization",
            reason=f"needs scope {scope}",
        )


class RateLimited(ApiError):
    def __init__(self, retry_after_s: int, per_minute: int) -> None:
        super().__init__(
            429, "rate_limit_exceeded", f"at most {per_minute} changes per minute per account; retry later"
        )
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        response = super().response()
        response.headers["retry-after"] = str(self.retry_after_s)
        return response
