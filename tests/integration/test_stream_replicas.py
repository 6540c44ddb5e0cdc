"""FLOWPLAN_STREAM_REPLICAS=3 on the three-node cluster of deploy/nats/cluster: the set-up
declares both streams with three copies, and declaring them again changes nothing; one node killed
under ingest and gateway load loses no acknowledged event and stores none twice, the services move
to the other nodes by themselves, and the node rejoins and catches up."""

import asyncio
import contextlib
import random
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import nats
import nats.aio.client
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from libs.eventlog.streams import declare_streams
from libs.localservers import LocalPostgres, free_port, nats_server_binary, stop_process, wait_for_port
from libs.settings import Settings, load_settings
from libs.setup import set_up
from proto.v1 import UsageRecorded
from tests.integration.conftest import all_known, out_of_reach_plans
from tests.stack import ROOT, Stack, eventually, make_settings, usage_event

pytestmark = pytest.mark.connected
NODES = ("nats-1", "nats-2", "nats-3")
_usage = msgspec.json.Decoder(UsageRecorded)


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


class Cluster:
    """The three nodes of deploy/nats/cluster on this machine; each can be killed and started again
    on its own store (as a machine that died and came back)."""

    def __init__(self, workdir: Path) -> None:
        self.ports = {node: (free_port(), free_port()) for node in NODES}
        self.configs: dict[str, Path] = {}
        self.processes: dict[str, subprocess.Popen[bytes] | None] = {}
        for node in NODES:
            folder = workdir / f"cluster-{node}-{self.ports[node][0]}"
            folder.mkdir()
            deployed = (ROOT / "deploy" / "nats" / "cluster" / f"{node}.conf").read_text()
            self.configs[node] = folder / "nats.conf"
            self.configs[node].write_text(local_config(deployed, self.ports, folder / "data"))

    def url(self, node: str = "nats-1") -> str:
        return f"nats://127.0.0.1:{self.ports[node][0]}"

    def start(self, node: str, wait: bool = True) -> None:
        log = open(self.configs[node].parent / "nats-server.log", "ab")
        process = subprocess.Popen([nats_server_binary(), "-c", str(self.configs[node])], stdout=log, stderr=log)
        self.processes[node] = process
        if wait:
            wait_for_port(self.ports[node][0], process=process)

    def kill(self, node: str) -> None:
        stop_process(self.processes.pop(node), graceful=False)

    def stop(self) -> None:
        for node in list(self.processes):
            stop_process(self.processes.pop(node))


@pytest.fixture
def cluster_nodes(workdir: Path) -> Iterator[Cluster]:
    nodes = Cluster(workdir)
    try:
        for node in NODES:
            nodes.start(node, wait=False)
        for node in NODES:
            wait_for_port(nodes.ports[node][0], process=nodes.processes[node])
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster(cluster_nodes: Cluster) -> str:
    return cluster_nodes.url()


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


# -- losing a node under load ----------------------------------------------------------------------

MODEL = "deepseek/deepseek-chat"
LOADED = ("simulator", "quota", "keys", "ingress", "gateway")
"""The services the load goes through (billing, refund and the console play no part in it)."""


async def cluster_settings(nodes: Cluster, postgres: LocalPostgres, workdir: Path) -> Settings:
    """Settings on the cluster (services bootstrap from nats-1 only, as from one Service name), R3
    streams, and plans whose RPM and caps the load never reaches."""
    path = out_of_reach_plans(workdir)
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nodes.url("nats-1"), f"{base}/flowplan_{uuid.uuid4().hex[:10]}")
    settings = msgspec.structs.replace(settings, plans_path=path, stream_replicas=3)
    deadline = time.monotonic() + 30
    while True:  # the cluster elects its JetStream leader first
        try:
            await set_up(settings)
            return settings
        except (nats.js.errors.Error, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def logged_usage(nc: nats.aio.client.Client, stream: str, account_ids: list[str]) -> Counter[str]:
    """How many times each event id is in the log, for the accounts' UsageRecorded events."""
    js, counts = nc.jetstream(), Counter[str]()
    for account_id in account_ids:
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL)
        sub = await js.pull_subscribe(f"flowplan.p.*.usage.{account_id}.UsageRecorded", stream=stream, config=config)
        try:
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=1)
                except TimeoutError:
                    break
                counts.update(_usage.decode(msg.data).event_id for msg in msgs)
        finally:
            await sub.unsubscribe()
    return counts


async def projected_usage(stack: Stack, account_ids: list[str]) -> set[str]:
    conn = await stack.db()
    try:
        rows = await conn.fetch("SELECT event_id FROM quota.usage WHERE account_id = ANY($1)", account_ids)
        return {row["event_id"] for row in rows}
    finally:
        await conn.close()


async def test_a_node_killed_under_ingest_and_gateway_load_loses_and_duplicates_nothing(
    cluster_nodes: Cluster, postgres: LocalPostgres, workdir: Path
) -> None:
    settings = await cluster_settings(cluster_nodes, postgres, workdir)
    log_dir = workdir / f"logs-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    stack = Stack(settings, log_dir)
    services = [getattr(stack, name) for name in LOADED]
    await asyncio.gather(*(asyncio.to_thread(service.start) for service in services))
    observer = await nats.connect([cluster_nodes.url(node) for node in NODES])  # the test's own eyes
    try:
        accounts = [await stack.create_account(f"node-loss-{i}") for i in range(3)]
        account_ids = [a["account_id"] for a in accounts]

        await eventually(lambda: all_known(stack, account_ids))

        acked: list[str] = []  # ingest events stored, as ingress acknowledged them (202)
        answered: list[str] = []  # gateway calls answered 200: their request ids
        statuses: Counter[str] = Counter()
        stop = asyncio.Event()

        async def ingest() -> None:
            while not stop.is_set():
                batch = [usage_event(random.choice(account_ids)) for _ in range(20)]
                for _ in range(600):  # a metering client: the same batch again until it is stored
                    try:
                        status, body = await stack.post_usage(batch)
                    except (aiohttp.ClientError, OSError):
                        status, body = 0, None
                    statuses[f"ingest {status}"] += 1
                    if status == 202:
                        acked.extend(f"default/{e['account_id']}/{e['event_id']}" for e in batch)
                        break
                    assert status in (0, 503), body
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("a usage batch was never stored")
                await asyncio.sleep(0.05)

        async def call(session: aiohttp.ClientSession) -> None:
            go = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "go [[tokens:8]]"}]}
            while not stop.is_set():
                account = random.choice(accounts)
                try:
                    async with session.post(
                        f"{stack.gateway_url}/v1/chat/completions",
                        json=go,
                        headers={"Authorization": f"Bearer {account['key']}"},
                    ) as response:
                        await response.read()
                        statuses[f"gateway {response.status}"] += 1
                        if response.status == 200:
                            answered.append(response.headers["x-flowplan-request-id"])
                        else:
                            await asyncio.sleep(0.1)
                except (aiohttp.ClientError, OSError):
                    statuses["gateway connection error"] += 1
                    await asyncio.sleep(0.1)

        async def caught_up() -> bool:
            """Every replica of the event stream current and without lag: the node rejoined."""
            try:
                info = await observer.jetstream().stream_info(settings.stream)
            except nats.errors.Error:  # no stream leader yet (an election under way)
                return False
            assert info.cluster is not None
            replicas = info.cluster.replicas or []
            return len(replicas) == 2 and all(r.current and not r.offline and not r.lag for r in replicas)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            load = [asyncio.create_task(ingest()), *(asyncio.create_task(call(session)) for _ in range(4))]
            try:
                await eventually(lambda: _async(len(answered) > 20 and len(acked) > 100))
                cluster_nodes.kill("nats-1")  # SIGKILL the node every service connected to
                killed_at = len(answered), len(acked)
                # The services find the other two nodes by themselves and the load goes on.
                await eventually(
                    lambda: _async(len(answered) > killed_at[0] + 20 and len(acked) > killed_at[1] + 100),
                    within=60,
                )
                cluster_nodes.start("nats-1")  # the machine comes back, on its own store
                await eventually(caught_up, within=60)
                after = len(answered), len(acked)
                await eventually(lambda: _async(len(answered) > after[0] + 10 and len(acked) > after[1] + 60))
            finally:
                stop.set()
                await asyncio.gather(*load)
        await eventually(caught_up, within=60)

        want = set(acked) | set(answered)

        async def all_in_the_log() -> Counter[str]:
            try:
                counts = await logged_usage(observer, settings.stream, account_ids)
            except nats.errors.Error:  # the cluster still settling after the restart: ask again
                return Counter()
            return counts if set(counts) >= want else Counter()

        try:
            in_log = await eventually(all_in_the_log, within=60)
        except AssertionError:
            in_log = await logged_usage(observer, settings.stream, account_ids)
        projected: set[str] = set()

        async def all_projected() -> bool:
            nonlocal projected
            projected = await projected_usage(stack, account_ids)
            return projected == set(in_log)

        with contextlib.suppress(AssertionError):
            await eventually(all_projected, within=60)
        print(
            f"\nnats-1 killed and restarted under load ({dict(statuses)}): "
            f"acknowledged to clients {len(acked)} ingested + {len(answered)} gateway calls = {len(want)}; "
            f"in the log {in_log.total()} ({len(in_log)} distinct); projected {len(projected)}"
        )
        assert len(acked) == len(set(acked)) and len(answered) == len(set(answered))
        assert set(in_log) >= want, f"acknowledged but not in the log: {sorted(want - set(in_log))[:5]}"
        assert set(in_log) <= want, f"in the log, never acknowledged: {sorted(set(in_log) - want)[:5]}"
        assert max(in_log.values()) == 1, f"stored twice: {[e for e, n in in_log.items() if n > 1][:5]}"
        assert projected == set(in_log), f"{len(set(in_log) - projected)} in the log not projected"
        assert in_log.total() == len(want) == len(projected)

        # Every service reconnected by itself (it was connected to nats-1) and is healthy.
        async with aiohttp.ClientSession() as session:
            for service in services:
                if service.name != "simulator":  # the one that does not use NATS
                    assert "NATS reconnected" in service.log(), service.name
                async with session.get(f"http://127.0.0.1:{service.port}/healthz") as response:
                    assert response.status == 200, service.name
    finally:
        await observer.close()
        for service in reversed(services):
            service.stop()


async def _async(value: bool) -> bool:
    return value
