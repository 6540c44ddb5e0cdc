"""Fixtures: a Postgres for the session, a nats-server and a database per test module."""

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from libs.localservers import LocalNats, LocalPostgres, share_ports
from libs.settings import Settings
from libs.setup import set_up
from tests import hangs
from tests.stack import Stack, make_settings

hypothesis_settings.register_profile("shared-cores", deadline=None)
hypothesis_settings.load_profile("shared-cores")
"""No per-example deadline: the tests run on 2 cores shared with other test sessions, where a
descheduled process can take Hypothesis's default 200 ms over a microsecond example and fail a
property that holds. Seen in tests/unit/test_gateway_edge_body.py: its seed passed when replayed,
and the same property run apart failed with "Unreliable test timings! ... took 581.82ms, ... on a
subsequent run it took 0.13 ms". Tests that want a bound on time assert it themselves."""

TIERS = ("unit", "component", "integration", "e2e")
"""The test folders, each also a marker: `pytest -m "unit or component"` runs the fast tiers."""


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker starts its servers on ports of its own share (libs/localservers.py)."""
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        share_ports(int(worker["workerid"].removeprefix("gw")), int(worker["workercount"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(tier)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A test still running near its timeout prints its asyncio tasks' stacks (tests/hangs.py): in its
    set-up, its call or its teardown, which pytest-timeout stops timing once the test has failed."""
    capture = item.config.pluginmanager.getplugin("capturemanager")

    def write(report: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            sys.stderr.write(report)
            sys.stderr.flush()

    timer = hangs.arm(item.nodeid, hangs.timeout_of(item.config, item), write)
    try:
        return (yield)
    finally:
        if timer is not None:
            timer.cancel()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """A failed test that had a stack reports the end of each service's log beside its own output,
    then where each service's tasks wait: the services run as processes whose logs leave with the
    test's temporary folder (a CI run's hang in a gateway call was otherwise told by nothing but the
    test's own timeout)."""
    report = yield
    if isinstance(report, pytest.TestReport) and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append(("flowplan services' logs, their last lines", value.log_ends()))
                report.sections.append(("flowplan services' asyncio tasks, where each waits", value.tasks()))
    return report


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flowplan-test-"))
    path.chmod(0o755)  # Postgres runs as another user and must reach its data folder
    yield path
    if not os.environ.get("FLOWPLAN_KEEP_TEST_DATA"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(workdir: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(workdir / "postgres", durable=False)
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="module")
def nats_server(workdir: Path) -> Iterator[LocalNats]:
    server = LocalNats(workdir / f"nats-{uuid.uuid4().hex[:8]}")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres) -> Settings:
    database = f"flowplan_{uuid.uuid4().hex[:10]}"
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nats_server.url, f"{base}/{database}")
    await set_up(settings)
    return settings


@pytest.fixture(scope="module")
async def stack(settings: Settings, workdir: Path) -> AsyncIterator[Stack]:
    log_dir = workdir / f"logs-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    stack = Stack(settings, log_dir)
    await asyncio.gather(*(asyncio.to_thread(service.start) for service in stack.services))
    yield stack
    for service in reversed(stack.services):
        service.stop()
