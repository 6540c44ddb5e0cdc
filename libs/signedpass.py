"""A short-lived pass the console mints and another service verifies, signed with the secret
they share (FLOWPLAN_CONSOLE_SECRET): `<prefix><field>.<field>…<unix expiry>.<MAC>`, the MAC an
HMAC-SHA256 (base64url, unpadded) over everything before it, prefix included, so that a pass of
one kind (its prefix) is never taken for another. libs/ownerpass.py and libs/chatpass.py say
which fields each kind carries. Pure: no I/O."""

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime


class SignedPass:
    """One kind of pass: its prefix and the form of each field (a regular expression without
    groups of its own, and without dots)."""

    def __init__(self, prefix: str, fields: Sequence[str]) -> None:
        self.prefix = prefix
        parts = "".join(f"({field})\\." for field in fields)
        self._form = re.compile(f"^{re.escape(prefix)}{parts}(\\d{{1,12}})\\.([A-Za-z0-9_-]{{43}})$")

    def mint(self, secret: str, fields: Sequence[str], now: datetime, ttl_s: int) -> str:
        signed = self.prefix + ".".join([*fields, str(int(now.timestamp()) + ttl_s)])
        return f"{signed}.{_mac(secret, signed)}"

    def owns(self, token: str) -> bool:
        """Whether the token claims to be of this kind (its prefix); `verify` says if it is."""
        return token.startswith(self.prefix)

    def verify(self, secret: str, token: str, now: datetime) -> tuple[str, ...] | None:
        """The pass's fields, or None: malformed, forged, altered, or expired."""
        match = self._form.match(token)
        if match is None:
            return None
        signed, _, mac = token.rpartition(".")
        if not hmac.compare_digest(mac, _mac(secret, signed)):
            return None
        *fields, until, _ = match.groups()
        if now.timestamp() >= int(until):
            return None
        return tuple(fields)


def _mac(secret: str, signed: str) -> str:
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
