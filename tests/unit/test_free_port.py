"""libs/localservers.py's ports for servers: outside the kernel's source ports, each worker its own."""

import socket

import pytest

from libs.localservers import Ports, free_port, server_ports, source_ports


def test_ports_are_never_ones_the_kernel_gives_outgoing_connections() -> None:
    """A port from a bind to port 0 is a source port: a connection opened before its server bound it
    could take it (a suite run's quota failed to start with EADDRINUSE)."""
    low, high = source_ports()
    ports = [free_port() for _ in range(200)]
    assert not [port for port in ports if low <= port <= high]
    assert len(set(ports)) == 200  # handed out in turn, none twice in a row of 200


def test_shares_of_the_ports_do_not_overlap_and_cover_them() -> None:
    whole = server_ports()
    shares = [server_ports(index, 3) for index in range(3)]
    assert all(len(share) == len(whole) // 3 for share in shares)
    assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])
    assert shares[0].start == whole.start and shares[2].stop <= whole.stop


def test_a_port_something_listens_on_is_skipped() -> None:
    """Within the ports for servers (outside the source ports, and this worker's share): the port after
    the listener's is free, where one among the source ports may be any connection's."""
    taken = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", taken))
        listener.listen()
        ports = Ports(range(taken, taken + 2))
        assert {ports.take() for _ in range(4)} == {taken + 1}


def test_no_port_left_is_said() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ports = Ports(range(listener.getsockname()[1], listener.getsockname()[1] + 1))
        with pytest.raises(RuntimeError, match="in use"):
            ports.take()
