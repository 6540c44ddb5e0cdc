"""The credential the console calls the account API with, for the owner it signed in.

The console owns owners' sessions; ingress owns the account API and who may use it. Rather
than ingress reading the console's tables, the console mints, per request, a short-lived
assertion "this owner of account X, until T", signed with the secret both share
(FLOWPLAN_CONSOLE_SECRET): `cs-v1-<account_id>.<unix expiry>.<HMAC-SHA256, base64url>`. It never
leaves the console (the browser holds only its session cookie), lives seconds, and grants the
owner's scope: everything a management key may do. Pure: no I/O (the signing is
libs/signedpass.py).
"""

from datetime import datetime

from libs.signedpass import SignedPass

PREFIX = "cs-v1-"
TTL_S = 60
_PASS = SignedPass(PREFIX, (r"acc_[A-Za-z0-9_-]{1,64}",))


def mint(secret: str, account_id: str, now: datetime, ttl_s: int = TTL_S) -> str:
    return _PASS.mint(secret, (account_id,), now, ttl_s)


def is_owner_pass(token: str) -> bool:
    return _PASS.owns(token)


def verify(secret: str, token: str, now: datetime) -> str | None:
    """The account the pass is for, or None: malformed, forged, or expired."""
    fields = _PASS.verify(secret, token, now)
    return fields[0] if fields is not None else None
