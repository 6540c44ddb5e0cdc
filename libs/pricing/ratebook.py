"""The rate book as a projection keeps it: each account's multiplier history (from its creation on)
and insider history, and the Flow rate's history. Quota (for the gateway) and ingress (for metered
usage) keep the same four tables (accounts, multipliers, insider, flow_rates) in their own schemas,
and load them into memory with this one loader, so that both price a call from the same book."""

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

import asyncpg

from libs.pricing.flows import Versioned
from libs.pricing.money import parse_fraction
from libs.pricing.multipliers import NEVER_INSIDER, InsiderHistory, unchanged_multiplier


@dataclass
class RateBook:
    flow_rate: Versioned
    multipliers: dict[str, Versioned] = field(default_factory=dict)
    """By account: the multiplier it was created with, then every change."""
    insiders: dict[str, InsiderHistory] = field(default_factory=dict)
    """By account (every account has one, empty when never marked)."""


def by_partition(schema: str, partitions: Collection[int] | None) -> tuple[str, tuple[list[int], ...]]:
    """The WHERE clause (and its argument, $1) that keeps the rows of a table aliased `t` whose
    account is in one of the partitions, by the `partition` column of the schema's accounts (quota's:
    an index on it); no clause and no argument for every partition."""
    if partitions is None:
        return "", ()
    clause = f"WHERE t.account_id IN (SELECT a.account_id FROM {schema}.accounts a WHERE a.partition = any($1::int[]))"
    return clause, (sorted(partitions),)


async def load_rate_book(
    conn: asyncpg.Connection,
    schema: str,
    default_usd_per_flow: Fraction,
    *,
    share_unchanged: bool = False,
    partitions: Collection[int] | None = None,
) -> RateBook:
    """With share_unchanged, an account whose multiplier never changed gets the shared history of its
    value, and one never marked the shared insider history (libs/pricing/multipliers.py): for an owner
    that replaces a history to change it rather than adding to it in place (quota's memory, a million
    accounts at scale). With partitions, the accounts of those partitions only (`by_partition`)."""
    book = RateBook(Versioned(default_usd_per_flow))
    only, args = by_partition(schema, partitions)
    changes: dict[str, list[tuple[str, datetime, Fraction]]] = defaultdict(list)
    query = f"SELECT event_id, account_id, effective_at, multiplier FROM {schema}.multipliers t {only}"
    for row in await conn.fetch(query, *args):
        changes[row["account_id"]].append((row["event_id"], row["effective_at"], parse_fraction(row["multiplier"])))
    marks: dict[str, list[tuple[str, datetime, bool]]] = defaultdict(list)
    for row in await conn.fetch(
        f"SELECT event_id, account_id, effective_at, insider FROM {schema}.insider t {only}", *args
    ):
        marks[row["account_id"]].append((row["event_id"], row["effective_at"], row["insider"]))
    for account_id, initial in await conn.fetch(
        f"SELECT account_id, multiplier FROM {schema}.accounts t {only}", *args
    ):
        value = parse_fraction(initial)
        if share_unchanged and account_id not in changes:
            book.multipliers[account_id] = unchanged_multiplier(value)
        else:
            multiplier = book.multipliers[account_id] = Versioned(value)
            for change in changes.get(account_id, ()):
                multiplier.add(*change)
        if share_unchanged and account_id not in marks:
            book.insiders[account_id] = NEVER_INSIDER
        else:
            insider = book.insiders[account_id] = InsiderHistory()
            for mark in marks.get(account_id, ()):
                insider.add(*mark)
    for row in await conn.fetch(f"SELECT event_id, effective_at, usd_per_flow FROM {schema}.flow_rates"):
        book.flow_rate.add(row["event_id"], row["effective_at"], parse_fraction(row["usd_per_flow"]))
    return book
