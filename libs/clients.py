"""The client's address: the connection's peer, or, when the peer is a trusted proxy
(FLOWPLAN_TRUSTED_PROXIES), the nearest address in X-Forwarded-For that is not one: a client can
prepend anything to that header, so only what trusted proxies appended is believed. Used by the
gateway and ingress for their per-client limits and by the gateway's abuse signals. Pure: no I/O."""

import ipaddress

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
    if not trusted or not forwarded_for or not _trusted(peer, trusted):  # no address parsed when none is trusted
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return str(address) if (address := _address(hop)) is not None else peer
    return hops[0] if hops else peer
