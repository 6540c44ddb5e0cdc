"""The rate book as a projection keeps it: each account's multiplier history (from its creation on)
and insider history, and the Flow rate's history. Quota (for the gateway) and ingress (for metered
usage) keep the same four tables (accounts, multipliers, insider, flow_rates) in their own schemas,
and load them into memory with this one loader, so that both price a call from the same book."""

from dataclasses import dataclass, field
from fractions import Fraction

import asyncpg

from libs.pricing.flows import Versioned
from libs.pricing.money import parse_fraction
from libs.pricing.multipliers import InsiderHistory


@dataclass
class RateBook:
    flow_rate: Versioned
    multipliers: dict[str, Versioned] = field(default_factory=dict)
    """By account: the multiplier it was created with, then every change."""
    insiders: dict[str, InsiderHistory] = field(default_factory=dict)
    """By account (every account has one, empty when never marked)."""


async def load_rate_book(conn: asyncpg.Connection, schema: str, default_usd_per_flow: Fraction) -> RateBook:
    book = RateBook(Versioned(default_usd_per_flow))
    for row in await conn.fetch(f"SELECT account_id, multiplier FROM {schema}.accounts"):
        book.multipliers[row["account_id"]] = Versioned(parse_fraction(row["multiplier"]))
        book.insiders[row["account_id"]] = InsiderHistory()
    for row in await conn.fetch(f"SELECT event_id, account_id, effective_at, multiplier FROM {schema}.multipliers"):
        book.multipliers[row["account_id"]].add(row["event_id"], row["effective_at"], parse_fraction(row["multiplier"]))
    for row in await conn.fetch(f"SELECT event_id, account_id, effective_at, insider FROM {schema}.insider"):
        book.insiders[row["account_id"]].add(row["event_id"], row["effective_at"], row["insider"])
    for row in await conn.fetch(f"SELECT event_id, effective_at, usd_per_flow FROM {schema}.flow_rates"):
        book.flow_rate.add(row["event_id"], row["effective_at"], parse_fraction(row["usd_per_flow"]))
    return book
