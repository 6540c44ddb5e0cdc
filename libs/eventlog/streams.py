"""One idempotent set-up step that declares the event log's streams.

The event stream keeps history forever (no max age) with discard=new: when a disk
budget is set and reached, publishes are refused loudly instead of old history being
deleted silently. Nats-Msg-Id dedupes within the duplicate window; the projections'
unique event_id keys dedupe forever after it.
"""

import nats.js
from nats.js import api

from libs.eventlog import subjects
from libs.settings_views import StreamSettings

DUPLICATE_WINDOW_S = 10 * 60


def event_stream_config(settings: StreamSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=settings.stream,
        description="flowplan event log: the source of truth",
        subjects=[f"{subjects.PUBLISH_PREFIX}.>"],
        subject_transform=api.SubjectTransform(
            src=subjects.transform_source(),
            dest=subjects.transform_destination(settings.partitions),
        ),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        max_age=0,
        max_bytes=settings.stream_max_bytes,
        max_msgs=-1,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=settings.stream_replicas,
        allow_direct=True,
        deny_delete=True,
        deny_purge=True,
    )


def dlq_stream_config(settings: StreamSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=settings.dlq_stream,
        description="flowplan dead letters: events a projection could not apply",
        subjects=[f"{subjects.DLQ_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.NEW,
        max_age=0,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=settings.stream_replicas,
    )


async def declare_streams(js: nats.js.JetStreamContext, settings: StreamSettings) -> None:
    """Create the streams, or bring their settings up to date; safe to run any number of times."""
    for config in (event_stream_config(settings), dlq_stream_config(settings)):
        try:
            info = await js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            continue
        existing = info.config.subject_transform
        wanted = config.subject_transform
        if existing and wanted and existing.dest != wanted.dest:
            raise RuntimeError(
                f"stream {config.name} is partitioned as {existing.dest}; "
                f"FLOWPLAN_PARTITIONS asks for {wanted.dest}. Repartitioning needs a migration."
            )
        await js.update_stream(config)


async def require_streams(js: nats.js.JetStreamContext, settings: StreamSettings) -> int:
    """Fail fast, with the fix in the message, when the set-up step has not run. Returns partitions."""
    try:
        info = await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError as exc:
        raise RuntimeError(f"stream {settings.stream} is missing: run `flowplan setup` first") from exc
    transform = info.config.subject_transform
    if transform is None or transform.dest != subjects.transform_destination(settings.partitions):
        raise RuntimeError(f"stream {settings.stream} is not partitioned as FLOWPLAN_PARTITIONS says")
    return settings.partitions
