"""What a projection is to the runner (libs/eventlog/runner.py): the contract a service's projection
implements, the fencing token it is written under, and which failures are transient (retried on the
same batch, for as long as it takes) rather than the event's own (a dead letter)."""

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import asyncpg
import nats.errors

from proto.v1.events import AnyEvent

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    nats.errors.Error,
)


Fence = Callable[[int], int | None]
"""The fencing token of a partition: the revision of the lease under which this instance projects
it, or None when it does not hold that lease (then it does not project the partition)."""


class Applied(NamedTuple):
    seq: int
    event: AnyEvent


AfterCommit = Callable[[], None]


class Projection(Protocol):
    """What a service supplies: which events it reads and how a batch changes its tables."""

    name: str
    schema: str
    event_types: tuple[str, ...]
    """The events apply() is given; the runner checkpoints past the others. Derived from the
    projection's handlers (libs/eventlog/dispatch.py); a name the log does not have is refused."""
    category: str | None
    """The one subject category to read, or None for every event of the partition."""

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        """Write the batch's effect (inside the runner's transaction). Return what to do after commit."""
        ...
