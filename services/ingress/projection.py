"""ingress's projection of accounts, multipliers, insider status and Flow rates (see directory.py)."""

from collections.abc import Sequence

import asyncpg

from libs.eventlog.runner import AfterCommit, Applied
from proto.v1 import AccountCreated, FlowRateChanged, InsiderStatusEnded, InsiderStatusSet, MultiplierChanged
from services.ingress.directory import Directory


class IngressProjection:
    name: str = "ingress"
    event_types: tuple[str, ...] = (
        "AccountCreated",
        "MultiplierChanged",
        "InsiderStatusSet",
        "InsiderStatusEnded",
        "FlowRateChanged",
    )
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
        s = self.schema
        for _, event in batch:
            if isinstance(event, AccountCreated):
                await conn.execute(
                    f"""INSERT INTO {s}.accounts (account_id, name, created_at, multiplier)
                        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                    event.account_id,
                    event.name,
                    event.occurred_at,
                    event.multiplier,
                )
            elif isinstance(event, MultiplierChanged):
                await conn.execute(
                    f"""INSERT INTO {s}.multipliers (event_id, account_id, effective_at, multiplier)
                        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                    event.event_id,
                    event.account_id,
                    event.occurred_at,
                    event.multiplier,
                )
            elif isinstance(event, InsiderStatusSet | InsiderStatusEnded):
                await conn.execute(
                    f"""INSERT INTO {s}.insider (event_id, account_id, effective_at, insider)
                        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
                    event.event_id,
                    event.account_id,
                    event.occurred_at,
                    isinstance(event, InsiderStatusSet) and event.insider,
                )
            elif isinstance(event, FlowRateChanged):
                await conn.execute(
                    f"""INSERT INTO {s}.flow_rates (event_id, effective_at, usd_per_flow) VALUES ($1, $2, $3)
                        ON CONFLICT DO NOTHING""",
                    event.event_id,
                    event.occurred_at,
                    event.usd_per_flow,
                )

        def after_commit() -> None:
            for _, event in batch:
                self.directory.apply(event)

        return after_commit
