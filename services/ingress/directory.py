"""What ingress must know to price, in memory: accounts, their multiplier and insider history,
and the Flow-rate history.

Fed by ingress's projection after each commit, and by ingress's own writes as soon as
JetStream has stored them (read-your-writes). Every change is keyed by its event id,
so applying the same event twice, from both paths, changes nothing.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

import asyncpg

from libs.pricing.flows import Versioned
from libs.pricing.money import parse_fraction
from libs.pricing.multipliers import InsiderHistory, multiplier_at
from libs.pricing.ratebook import load_rate_book
from proto.v1 import AccountCreated, FlowRateChanged, InsiderStatusEnded, InsiderStatusSet, MultiplierChanged
from proto.v1.events import Event


@dataclass
class Account:
    account_id: str
    name: str
    created_at: datetime
    multiplier: Versioned
    """The operator's explicit multiplier over time (1: none set)."""
    insider: InsiderHistory = field(default_factory=InsiderHistory)


class Directory:
    def __init__(self, default_usd_per_flow: Fraction, insider_multiplier: Fraction = Fraction(5, 4)) -> None:
        self.default_usd_per_flow = default_usd_per_flow
        self.insider_multiplier = insider_multiplier
        self.sync: Callable[[], Awaitable[None]] | None = None
        """Set when several ingress instances run (follower.py): waits until this one holds every
        account event stored so far, so a change made through another prices usage here at once."""
        self.accounts: dict[str, Account] = {}
        self.flow_rate = Versioned(default_usd_per_flow)

    async def synced(self) -> None:
        if self.sync is not None:
            await self.sync()

    def apply(self, event: Event) -> None:
        if isinstance(event, AccountCreated):
            if event.account_id not in self.accounts:
                self.accounts[event.account_id] = Account(
                    event.account_id,
                    event.name,
                    event.occurred_at,
                    Versioned(parse_fraction(event.multiplier)),
                )
        elif isinstance(event, MultiplierChanged):
            if (account := self.accounts.get(event.account_id)) is not None:
                account.multiplier.add(event.event_id, event.occurred_at, parse_fraction(event.multiplier))
        elif isinstance(event, InsiderStatusSet | InsiderStatusEnded):
            if (account := self.accounts.get(event.account_id)) is not None:
                account.insider.add(
                    event.event_id, event.occurred_at, isinstance(event, InsiderStatusSet) and event.insider
                )
        elif isinstance(event, FlowRateChanged):
            self.flow_rate.add(event.event_id, event.occurred_at, parse_fraction(event.usd_per_flow))

    async def load(self, conn: asyncpg.Connection, schema: str) -> None:
        """Memory from the projection's tables (at start, and after a replay swapped them). What
        memory knows and the tables do not yet is kept: ingress applies its own writes at once,
        before its projection gets to them, and every change is keyed by its event id."""
        book = await load_rate_book(conn, schema, self.default_usd_per_flow)
        accounts = {
            row["account_id"]: Account(
                row["account_id"], row["name"], row["created_at"], book.multipliers[row["account_id"]],
                book.insiders[row["account_id"]],
            )
            for row in await conn.fetch(f"SELECT account_id, name, created_at FROM {schema}.accounts")
        }  # fmt: skip
        flow_rate = book.flow_rate
        for account_id, known in self.accounts.items():
            account = accounts.setdefault(account_id, known)
            account.multiplier.merge(known.multiplier)
            account.insider.merge(known.insider)
        flow_rate.merge(self.flow_rate)
        self.accounts, self.flow_rate = accounts, flow_rate

    def multiplier(self, account: Account, when: datetime) -> Fraction:
        """The multiplier that prices the account's call made at `when` (libs.pricing.multipliers)."""
        return multiplier_at(account.multiplier, account.insider, self.insider_multiplier, when)
