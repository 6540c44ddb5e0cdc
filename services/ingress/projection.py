"""ingress's projection of accounts, multipliers, insider status and Flow rates (see directory.py)."""

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.projection import AfterCommit, Applied
from proto.v1 import AccountCreated, FlowRateChanged, InsiderStatusEnded, InsiderStatusSet, MultiplierChanged
from services.ingress.directory import Directory


@dataclass(slots=True)
class IngressBatch:
    conn: asyncpg.Connection


class IngressProjection(EventHandlers[IngressBatch]):
    name: str = "ingress"
    category: str | None = "account"
    tables: tuple[str, ...] = ("checkpoints", "accounts", "multipliers", "insider", "flow_rates")
    """Not seen_events: ingress's own dedupe claims are not derived from the log."""

    def __init__(self, directory: Directory, schema: str = "ingress") -> None:
        self.directory = directory
        self.schema = schema

    def rebuilt_into(self, schema: str) -> "IngressProjection":
        directory = Directory(self.directory.default_usd_per_flow, self.directory.insider_multiplier)
        return IngressProjection(directory, schema)

    async def reload(self, conn: asyncpg.Connection) -> None:
        await self.directory.load(conn, self.schema)

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        await self.dispatch(IngressBatch(conn), batch)

        def after_commit() -> None:
            for _, event in batch:
                self.directory.apply(event)

        return after_commit

    @handles(AccountCreated)
    async def _account_created(self, batch: IngressBatch, _seq: int, event: AccountCreated) -> None:
        await batch.conn.execute(
            f"""INSERT INTO {self.schema}.accounts (account_id, name, created_at, multiplier)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.account_id, event.name, event.occurred_at, event.multiplier,
        )  # fmt: skip

    @handles(MultiplierChanged)
    async def _multiplier_changed(self, batch: IngressBatch, _seq: int, event: MultiplierChanged) -> None:
        await batch.conn.execute(
            f"""INSERT INTO {self.schema}.multipliers (event_id, account_id, effective_at, multiplier)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.occurred_at, event.multiplier,
        )  # fmt: skip

    @handles(InsiderStatusSet, InsiderStatusEnded)
    async def _insider_changed(
        self, batch: IngressBatch, _seq: int, event: InsiderStatusSet | InsiderStatusEnded
    ) -> None:
        await batch.conn.execute(
            f"""INSERT INTO {self.schema}.insider (event_id, account_id, effective_at, insider)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.occurred_at,
            isinstance(event, InsiderStatusSet) and event.insider,
        )  # fmt: skip

    @handles(FlowRateChanged)
    async def _flow_rate_changed(self, batch: IngressBatch, _seq: int, event: FlowRateChanged) -> None:
        await batch.conn.execute(
            f"""INSERT INTO {self.schema}.flow_rates (event_id, effective_at, usd_per_flow) VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING""",
            event.event_id, event.occurred_at, event.usd_per_flow,
        )  # fmt: skip
