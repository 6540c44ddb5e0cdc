"""`flowplan up`, the dev supervisor: a service stopped on its own (an orchestrator's SIGTERM for a
rolling deploy, a crash) is restarted; only a signal to `flowplan up` itself stops the stack."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.localservers import port_is_free
from libs.settings import Settings, settings_environ

pytestmark = pytest.mark.connected
ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> dict[str, int]:
    """The service processes `flowplan up` runs: name -> pid."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-m" in command:
                found[command[command.index(b"-m") + 1].decode().removeprefix("services.")] = int(child)
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {within} s")
        time.sleep(0.2)


def test_a_service_stopped_alone_is_restarted_and_only_flowplan_up_stops_the_stack(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **settings_environ(settings), "FLOWPLAN_STATE_DIR": str(tmp_path / "state")}
    output = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [str(Path(sys.executable).parent / "flowplan"), "up"], env=env, cwd=ROOT, stdout=output, stderr=output
    )
    try:
        wait_until(lambda: "flowplan is running" in (tmp_path / "up.log").read_text(), 180, "running")
        # `make run` prints the console and the demo owner's one-time sign-in link, which works.
        banner = (tmp_path / "up.log").read_text()
        assert f"console http://{settings.host}:{settings.console_port}" in banner
        link = re.search(r"console: +(http://\S+/sign-in/link/\S+)", banner)
        assert link, banner
        with urllib.request.urlopen(link.group(1), timeout=30) as page:
            assert page.status == 200 and "New password" in page.read().decode()
        services = children(up.pid)
        assert set(services) >= {"gateway", "quota", "keys", "ingress"}, services

        os.kill(services["gateway"], signal.SIGTERM)  # an orchestrator stops one instance
        wait_until(lambda: not alive(services["gateway"]), 60, "the gateway stopped")
        wait_until(lambda: children(up.pid).get("gateway") not in (None, services["gateway"]), 60, "restarted")
        wait_until(lambda: not port_is_free(settings.gateway_port), 60, "the new gateway listening")
        assert up.poll() is None  # the stack runs on
        assert all(alive(pid) for name, pid in services.items() if name != "gateway")
        assert "gateway exited with 0; restarting" in (tmp_path / "up.log").read_text()

        running = children(up.pid)
        up.send_signal(signal.SIGTERM)  # now the supervisor itself is told to stop: everything stops
        assert up.wait(120) == 0
        assert not any(alive(pid) for pid in running.values())
    finally:
        leftovers = children(up.pid) if up.poll() is None else {}
        if up.poll() is None:
            up.kill()
        for pid in leftovers.values():
            os.kill(pid, signal.SIGKILL)
        output.close()
