"""How far each projection is behind the event log, as gauges on /metrics.

A scrape must not cost round trips to NATS and Postgres, and the projection's hot loop
must not pay for it per event: a background loop reads the stream's last sequence, the
projection's checkpoints (Postgres) and its consumers' backlog (consumer info) every few
seconds, and the gauges report what it read last.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable

import asyncpg
import nats.js
import nats.js.errors
from opentelemetry.metrics import CallbackOptions, Observation

from libs.eventlog.runner import ProjectionRunner
from libs.observability import meter

log = logging.getLogger(__name__)
REFRESH_S = 5.0
Readings = dict[tuple[str, int], int]
"""A value per (projection, partition)."""

_lag: Readings = {}
_pending: Readings = {}


def _observe(readings: Readings) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, {"projection": p, "partition": str(n)}) for (p, n), v in list(readings.items())]

    return callback


_meter = meter("eventlog")
_meter.create_observable_gauge(
    "flowplan_projection_lag",
    callbacks=[_observe(_lag)],
    description="stream sequences between the event log's last one and the projection's checkpoint, "
    "while the partition's consumer has events left to apply (0 when it has none)",
)
_meter.create_observable_gauge(
    "flowplan_consumer_pending",
    callbacks=[_observe(_pending)],
    description="events the partition's consumer has not been delivered yet (JetStream num_pending)",
)


class ProjectionMonitor:
    def __init__(self, runner: ProjectionRunner, pool: asyncpg.Pool, js: nats.js.JetStreamContext, *, stream: str,
                 partitions: int, refresh_s: float = REFRESH_S) -> None:  # fmt: skip
        self._runner = runner
        self._pool = pool
        self._js = js
        self._stream = stream
        self._partitions = partitions
        self._refresh_s = refresh_s

    async def run(self) -> None:
        """Never ends and never fails: an outage leaves the last readings in place and is logged."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("%s: lag not measured (%r)", self._runner.projection.name, exc)
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> dict[int, tuple[int, int]]:
        """Read and publish each partition's (lag, pending); returned for whoever asked. A partition
        whose consumer is not made yet (the runner makes it as it starts, after this monitor) is left
        out: not an outage, and not a warning at every start."""
        projection = self._runner.projection
        rows = await self._pool.fetch(
            f"SELECT partition, last_seq FROM {projection.schema}.checkpoints WHERE projection = $1", projection.name
        )
        checkpoints = {int(row["partition"]): int(row["last_seq"]) for row in rows}
        head = (await self._js.stream_info(self._stream)).state.last_seq
        readings: dict[int, tuple[int, int]] = {}
        for partition in range(self._partitions):
            try:
                consumer = await self._js.consumer_info(self._stream, self._runner.consumer_name(partition))
            except nats.js.errors.NotFoundError:
                continue
            behind = (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
            # An idle partition is not behind because other partitions' events moved the head on.
            lag = max(0, head - checkpoints.get(partition, 0)) if behind else 0
            readings[partition] = (lag, consumer.num_pending or 0)
            _lag[(projection.name, partition)], _pending[(projection.name, partition)] = readings[partition]
        return readings
