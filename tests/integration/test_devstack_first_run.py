"""`make run` on a second start: the saved demo account is printed again only when the live stack
knows its key, and ports whose last connections are in TIME_WAIT count as free (only a listener
makes a port busy)."""

import asyncio
import json
import socket
from pathlib import Path

import pytest

from libs import apikeys
from libs.devstack import DevStack, _demo_account
from libs.localservers import free_port, port_is_free
from libs.settings import load_settings
from tests.stack import Stack


def _time_wait_on(port: int) -> None:
    """Serve one connection on the port and close it from the server's side first, as a server does
    that stops while clients are connected: the server's end stays in TIME_WAIT for a minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the active close: TIME_WAIT is on this side, the server's port
        client.recv(1)
        client.close()


def _time_wait_ports() -> set[int]:
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return {int(line.split()[1].split(":")[1], 16) for line in lines if line.split()[3] == "06"}


def test_a_port_whose_connections_are_in_time_wait_is_free_and_a_listener_is_not() -> None:
    port = free_port()
    _time_wait_on(port)
    assert port in _time_wait_ports()  # the state `make run` met after a stack that served traffic
    with socket.socket() as plain:  # what the old check did: bind without SO_REUSEADDR, and fail
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert port_is_free(port)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen()
        assert not port_is_free(port)  # a server listening (even on every interface) is a port in use


def _identity(account: dict[str, str]) -> tuple[str, str, str]:
    """What makes a demo account the same one (each start adds a fresh one-time sign-in link)."""
    return account["account_id"], account["key"], account["management_key"]


@pytest.mark.connected
async def test_the_saved_demo_account_is_kept_only_while_the_stack_knows_its_key(stack: Stack, tmp_path: Path) -> None:
    first = await asyncio.to_thread(_demo_account, stack.settings, tmp_path)
    assert (await stack.usage(first["key"]))["plan"] == "pro"
    again = await asyncio.to_thread(_demo_account, stack.settings, tmp_path)
    assert _identity(again) == _identity(first)  # the same database: the same account, printed again

    # a saved account from another database (another FLOWPLAN_DATABASE_URL, or a dropped one)
    saved = tmp_path / "demo-account.json"
    elsewhere = {"account_id": "acc_0123456789abcdef", "key": apikeys.generate("subscription"), "key_id": "key_x"}
    saved.write_text(json.dumps(elsewhere))
    fresh = await asyncio.to_thread(_demo_account, stack.settings, tmp_path)
    assert fresh["account_id"] != elsewhere["account_id"]
    assert (await stack.usage(fresh["key"]))["plan"] == "pro"  # the printed key works
    assert json.loads(saved.read_text()) == fresh and saved.stat().st_mode & 0o777 == 0o600

    # a saved account the stack knows but that is no longer on Pro (its demo month ended): paid again
    lapsed = await stack.create_account("demo")
    saved.write_text(json.dumps(lapsed))
    assert (await stack.usage(lapsed["key"]))["plan"] == "free"
    kept = await asyncio.to_thread(_demo_account, stack.settings, tmp_path)
    assert _identity(kept) == _identity(lapsed) and (await stack.usage(lapsed["key"]))["plan"] == "pro"


def test_make_run_beyond_loopback_with_the_development_tokens_stops_before_starting_anything(tmp_path: Path) -> None:
    stack = DevStack(tmp_path)
    settings = load_settings({"FLOWPLAN_HOST": "0.0.0.0", "FLOWPLAN_INGEST_TOKEN": "a-real-one"})
    with pytest.raises(SystemExit, match="FLOWPLAN_ADMIN_TOKEN"):
        stack.start_services({}, settings)
    assert stack.children == {}
