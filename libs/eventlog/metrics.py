"""The event log's metrics, the same in every service that publishes or projects: names and
labels are an API (no per-account labels)."""

from libs.observability import Counter

SCOPE = "eventlog"

events_published = Counter(
    SCOPE, "flowplan_events_published", description="events JetStream stored (duplicates not counted), by event type"
)
events_applied = Counter(
    SCOPE, "flowplan_projection_events_applied", description="events a projection applied and committed"
)
dead_letters = Counter(
    SCOPE, "flowplan_dead_letters", description="events a projection could not decode or apply, sent to the DLQ"
)
replay_events = Counter(
    SCOPE, "flowplan_replay_events", description="events a `flowplan replay` rebuild read from the log, by projection"
)
fenced_batches = Counter(
    SCOPE,
    "flowplan_projection_fenced_batches",
    description="partitions a projection stopped because a newer owner's lease revision was on the checkpoint "
    "(a stale writer: its batch was rolled back)",
)
