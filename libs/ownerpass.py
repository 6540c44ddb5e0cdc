"""The credential the console calls the account API with, for the owner it signed in.

The console owns owners' sessions; ingress owns the account API and who may use it. Rather
than ingress reading the console's tables, the console mints, per request, a short-lived
assertion "this owner of account X, until T", signed with the secret both share
(FLOWPLAN_CONSOLE_SECRET): `cs-v1-<account_id>.<unix expiry>.<HMAC-SHA256, base64url>`. It never
leaves the console (the browser holds only its session cookie), lives seconds, and grants the
owner's scope: everything a management key may do. Pure: no I/O.
"""

import base64
import hashlib
import hmac
import re
from datetime import datetime

PREFIX = "cs-v1-"
TTL_S = 60
_FORM = re.compile(r"^cs-v1-(?P<account>acc_[A-Za-z0-9_-]{1,64})\.(?P<until>\d{1,12})\.(?P<mac>[A-Za-z0-9_-]{43})$")


def _mac(secret: str, account_id: str, until: int) -> str:
    digest = hmac.new(secret.encode(), f"{PREFIX}{account_id}.{until}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint(secret: str, account_id: str, now: datetime, ttl_s: int = TTL_S) -> str:
    until = int(now.timestamp()) + ttl_s
    return f"{PREFIX}{account_id}.{until}.{_mac(secret, account_id, until)}"


def is_owner_pass(token: str) -> bool:
    return token.startswith(PREFIX)


def verify(secret: str, token: str, now: datetime) -> str | None:
    """The account the pass is for, or None: malformed, forged, or expired."""
    match = _FORM.match(token)
    if match is None:
        return None
    account_id, until = match.group("account"), int(match.group("until"))
    if not hmac.compare_digest(match.group("mac"), _mac(secret, account_id, until)):
        return None
    return account_id if now.timestamp() < until else None
