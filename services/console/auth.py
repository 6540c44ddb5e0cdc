"""The console's rules for owners' credentials. Pure: no I/O.

Secrets the browser holds (session ids, one-time links) are 256 random bits and stored only as
SHA-256; passwords as argon2id. CSRF tokens are derived from the cookie they protect (an HMAC with
the console's secret), so every form of a session or of a visitor not yet signed in carries one
without any storage. Wrong passwords are counted per email and per client address: each one is
answered more slowly, and past a limit in the window sign-in is locked for that window.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

LINK_TTL = timedelta(hours=24)
SESSION_IDLE = timedelta(hours=2)
SESSION_ABSOLUTE = timedelta(days=7)
MIN_PASSWORD = 10
MAX_PASSWORD = 1024

_hasher = PasswordHasher()  # argon2id with argon2-cffi's recommended parameters
_NOBODY = _hasher.hash(secrets.token_urlsafe(16))
"""Checked against when the email is unknown, so that an unknown email takes as long as a wrong password."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _NOBODY, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"Use at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Use at most {MAX_PASSWORD} characters."
    return None


def csrf_token(secret: str, cookie: str) -> str:
    return hmac.new(secret.encode(), f"csrf:{cookie}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, cookie: str | None, token: str | None) -> bool:
    return bool(cookie and token) and hmac.compare_digest(csrf_token(secret, cookie or ""), token or "")


def session_alive(created_at: datetime, last_seen_at: datetime, ended_at: datetime | None, now: datetime) -> bool:
    return ended_at is None and now - last_seen_at < SESSION_IDLE and now - created_at < SESSION_ABSOLUTE


@dataclass(frozen=True)
class Lockout:
    """Past `per_email` wrong passwords for one email, or `per_address` from one address, within
    `window`, sign-in is refused (even with the right password) until the window has passed."""

    per_email: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)
    step_s: float = 0.25
    max_delay_s: float = 2.0

    def locked(self, email_failures: int, address_failures: int) -> bool:
        return email_failures >= self.per_email or address_failures >= self.per_address

    def delay_s(self, failures: int) -> float:
        """How long the answer to the n-th wrong password in a row waits."""
        return min(self.max_delay_s, self.step_s * failures)
