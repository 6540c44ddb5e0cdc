"""FLOWPLAN_STREAM_REPLICAS=3 on the three-node cluster of deploy/nats/cluster: the set-up
declares both streams with three copies, and declaring them again changes nothing."""

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest

from libs.eventlog.streams import declare_streams
from libs.localservers import free_port, nats_server_binary, stop_process, wait_for_port
from libs.settings import load_settings
from tests.stack import ROOT

pytestmark = pytest.mark.connected
NODES = ("nats-1", "nats-2", "nats-3")


def local_config(text: str, ports: dict[str, tuple[int, int]], store: Path) -> str:
    """The deployed node config with its hosts, ports and store moved onto this machine."""
    own = re.search(r"server_name: (\S+)", text)
    assert own is not None
    client, route = ports[own.group(1)]
    text = text.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
    text = text.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route}")
    text = re.sub(r"http: \S+", "", text)
    text = text.replace("store_dir: /data", f'store_dir: "{store}"')
    for node, (_, node_route) in ports.items():
        text = text.replace(f"nats-route://{node}:6222", f"nats-route://127.0.0.1:{node_route}")
    return text


@pytest.fixture
def cluster(workdir: Path) -> Iterator[str]:
    ports = {node: (free_port(), free_port()) for node in NODES}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in NODES:
            folder = workdir / f"cluster-{node}-{ports[node][0]}"
            folder.mkdir()
            deployed = (ROOT / "deploy" / "nats" / "cluster" / f"{node}.conf").read_text()
            config = folder / "nats.conf"
            config.write_text(local_config(deployed, ports, folder / "data"))
            log = open(folder / "nats-server.log", "wb")
            processes.append(subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=log, stderr=log))
        for node, process in zip(NODES, processes, strict=True):
            wait_for_port(ports[node][0], process=process)
        yield f"nats://127.0.0.1:{ports['nats-1'][0]}"
    finally:
        for process in processes:
            stop_process(process)


async def test_streams_are_declared_with_three_replicas(cluster: str) -> None:
    settings = load_settings({"FLOWPLAN_STREAM_REPLICAS": "3"}, nats_url=cluster)
    nc = await nats.connect(cluster)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while True:  # the cluster elects its JetStream leader first
            try:
                await declare_streams(js, settings)
                break
            except (nats.js.errors.Error, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        await declare_streams(js, settings)  # again: idempotent
        for stream in (settings.stream, settings.dlq_stream):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()
