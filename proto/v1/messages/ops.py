"""Operations: dead letters applied again, projections replayed (`flowplan dlq`, `flowplan replay`)."""

from typing import Literal

import msgspec


class RetryDeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Apply the event in this dead letter again (sent to the projection that dead-lettered it)."""

    dlq_seq: int


class DeadLetterRetried(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    dlq_seq: int
    applied: bool
    """True: applied and removed from the dead-letter stream. False: it stays there; see error."""
    error: str | None = None
    elsewhere: bool = False
    """True: the instance that answered does not project the dead letter's partition, and did nothing;
    every instance of the projection's service hears a retry, and the one that projects it applies it."""


class StartReplay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Rebuild a projection from the event log into a fresh schema, optionally compare it with the
    live one, and swap it in. With differences found it is swapped only when swap_if_different."""

    from_seq: int = 1
    verify: bool = False
    swap_if_different: bool = False
    keep_old: bool = False
    """Keep the replaced tables in a schema <schema>_old_<time> instead of dropping them."""
    pause_timeout_s: float = 30.0
    """How long every instance of the service gets to pause its projection; one that has not
    confirmed by then fails the replay before its swap."""


class ReplayStatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    pass


class PauseForReplay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """To every instance of a service (scatter-gather): pause the projection between two batches
    and hold it until ResumeAfterReplay, or for hold_s at most (the coordinator died)."""

    replay_id: str
    coordinator: str
    """The instance running the replay (it pauses itself)."""
    timeout_s: float
    """How long the instance may take to reach a batch boundary."""
    hold_s: float


class ResumeAfterReplay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """To every instance: the pause of `replay_id` is over; with swapped, reload memory from the
    swapped tables before resuming."""

    replay_id: str
    swapped: bool


class InstancePaused(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An instance's answer to PauseForReplay (paused, or why not) and to ResumeAfterReplay."""

    replay_id: str
    instance: str
    paused: bool
    error: str | None = None


class TableDifference(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    live_rows: int
    rebuilt_rows: int
    first_keys: list[str]
    """The first primary keys (in key order) whose rows differ, each saying how."""


ReplayPhase = Literal["idle", "rebuilding", "catching_up", "verifying", "swapping", "done", "failed"]


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    projection: str
    phase: ReplayPhase
    read: int = 0
    """Events read from the log so far."""
    total: int = 0
    """Events to read, as far as known (the log keeps growing while live traffic goes on)."""
    seconds: float = 0.0
    """Since the replay started."""
    rebuild_seconds: float = 0.0
    verify_seconds: float = 0.0
    paused_ms: float = 0.0
    """How long the live projection stood still (catch-up to the same checkpoints, swap, reload)."""
    skipped: int = 0
    """Events that could not be applied (the live projection dead-lettered them too)."""
    verified: bool = False
    differences: list[TableDifference] = []
    swapped: bool = False
    kept_schema: str | None = None
    error: str | None = None
    replay_id: str = ""
    """Names the replay: status requests are answered by every instance, each with its own."""
    instances: list[str] = []
    """The instances whose projection paused for the replay (the one running it first)."""
