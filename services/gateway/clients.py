"""Who called, as the log may keep it: keyed hashes (HMAC-SHA256 with FLOWPLAN_CLIENT_HASH_KEY) of
the client's address (libs.clients: the peer, or the client a trusted proxy names) and user
agent, for the abuse signals. Never the address itself. Pure: no I/O."""

import functools
import hashlib
import hmac
from collections.abc import Mapping

from libs.clients import Network, client_address


@functools.lru_cache(maxsize=1024)
def keyed_hash(key: str, kind: str, value: str) -> str:
    """Remembered for the addresses and agents seen last: a client calls again and again from the
    same ones, and two HMACs were 5 µs of every call's CPU. 1,024 of them at most (an agent header
    of up to 8 KB each)."""
    return hmac.new(key.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


def client_marks(
    key: str, peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> tuple[str | None, str | None]:
    """(client address hash, user agent hash); None for what the call did not show."""
    address = client_address(peer, headers.get("X-Forwarded-For"), trusted)
    agent = headers.get("User-Agent", "")
    return (
        keyed_hash(key, "addr", address) if address else None,
        keyed_hash(key, "ua", agent) if agent else None,
    )
