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


class StartReplay(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Rebuild a projection from the event log into a fresh schema, optionally compare it with the
    live one, and swap it in. With differences found it is swapped only when swap_if_different."""

    from_seq: int = 1
    verify: bool = False
    swap_if_different: bool = False
    keep_old: bool = False
    """Keep the replaced tables in a schema <schema>_old_<time> instead of dropping them."""


class ReplayStatusRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    pass


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
