"""API key secrets: `sk-ss-v1-` (subscription) or `sk-pg-v1-` (pay-as-you-go), the model keys,
and `sk-mg-v1-` (management: changes the account, never calls a model); 43 base62
characters of randomness and a 6-character checksum, so a mistyped or made-up key is
refused without any lookup. Only the SHA-256 of a secret is ever stored or logged."""

import hashlib
import secrets
import string
import zlib
from typing import Literal

KeyKind = Literal["subscription", "payg", "management"]
PREFIXES: dict[KeyKind, str] = {"subscription": "sk-ss-v1-", "payg": "sk-pg-v1-", "management": "sk-mg-v1-"}
MODEL_KINDS: frozenset[KeyKind] = frozenset({"subscription", "payg"})
"""The kinds that call models. They are pasted into tools and leak, so they only read the account."""
_ALPHABET = string.digits + string.ascii_letters
_BODY = 43  # 43 base62 characters carry 256 bits
_CHECK = 6


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(prefix: str, body: str) -> str:
    return _base62(zlib.crc32(f"{prefix}{body}".encode()), _CHECK)


def generate(kind: KeyKind) -> str:
    prefix = PREFIXES[kind]
    body = _base62(secrets.randbits(256), _BODY)
    return f"{prefix}{body}{_checksum(prefix, body)}"


def kind_of(secret: str) -> KeyKind | None:
    """The key's kind when it is well formed (prefix, length, alphabet, checksum), else None."""
    for kind, prefix in PREFIXES.items():
        if secret.startswith(prefix):
            rest = secret[len(prefix) :]
            if len(rest) != _BODY + _CHECK or any(c not in _ALPHABET for c in rest):
                return None
            body, check = rest[:_BODY], rest[_BODY:]
            return kind if secrets.compare_digest(check, _checksum(prefix, body)) else None
    return None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
