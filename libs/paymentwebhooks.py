"""Signed payment-provider webhooks, Stripe's way: the header
`Flowplan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the secret the
provider and flowplan share (FLOWPLAN_PAYMENT_WEBHOOK_SECRET). The local provider (served by the
simulator) signs; ingress verifies, refusing a wrong signature and a timestamp more than
TOLERANCE_S away (a replay of an old delivery). Pure: no I/O."""

import hashlib
import hmac

HEADER = "Flowplan-Signature"
TOLERANCE_S = 300


class BadSignature(Exception):
    pass


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float, tolerance_s: int = TOLERANCE_S) -> None:
    """Raise BadSignature unless the header signs this body, recently enough."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError as exc:
        raise BadSignature("no timestamp") from exc
    if abs(now - timestamp) > tolerance_s:
        raise BadSignature(f"timestamp more than {tolerance_s} s away")
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, parts.get("v1", "")):
        raise BadSignature("signature does not match")
