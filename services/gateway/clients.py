"""Who called, as the log may keep it: keyed hashes (HMAC-SHA256 with FLOWPLAN_CLIENT_HASH_KEY) of
the client's address and user agent, for the abuse signals. Never the address itself.

The client's address is the connection's peer, or, when the peer is a trusted proxy
(FLOWPLAN_TRUSTED_PROXIES), the nearest address in X-Forwarded-For that is not one: a client can
prepend anything to that header, so only what trusted proxies appended is believed. Pure: no I/O."""

import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(setting: str) -> tuple[Network, ...]:
    """FLOWPLAN_TRUSTED_PROXIES: addresses or networks, comma-separated (a bad one stops the start)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(text: str | None, trusted: tuple[Network, ...]) -> bool:
    address = _address(text or "")
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str | None:
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return str(address) if (address := _address(hop)) is not None else peer
    return hops[0] if hops else peer


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
