"""The abuse rules, pure: scores and evidence from what billing's projection counted (abuse.py).
They show the operator what the log says; the operator decides (a multiplier, a suspension).

- shared_client_address: one client address (keyed hash) calling for several accounts in turn;
- around_the_clock: days with use in nearly every hour, near the plan's sustainable daily use
  (its weekly cap / 7);
- keys_across_clients: many of the account's keys used from many clients;
- identical_usage: accounts whose hour-by-hour calls are the same, hour for hour (one script
  driving several accounts).
An account's score is the sum of its signals' scores, at most 100."""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import NamedTuple

from libs.pricing.catalog import FREE
from proto.v1 import AbuseSignal, AccountAbuse

SHARED_MIN_ACCOUNTS = 3
"""Accounts one client address must call for before it is a signal (two may be a household)."""
CLOCK_MIN_HOURS = 20
"""Hours of a UTC day with use that make the day 'around the clock'."""
CLOCK_NEAR_CAP = (4, 5)
"""The share of the plan's sustainable daily use (weekly cap / 7) a day must reach."""
CLOCK_MIN_DAYS = 3
KEYS_MIN = 3
"""Keys, and clients, an account must spread its calls over before it is a signal."""
PATTERN_MIN_HOURS = 12
"""Active hours an account's pattern must span before two accounts alike in it mean something."""
MAX_SCORE = 100


class ClientUse(NamedTuple):
    account_id: str
    key_id: str
    client_hash: str
    agent_hash: str
    first_seen: datetime
    last_seen: datetime
    calls: int


class HourUse(NamedTuple):
    account_id: str
    hour: datetime
    calls: int
    flows_micros: int


PlanSpan = tuple[datetime, str, datetime | None]
"""A plan change: (effective_at, plan, paid_until: past it, unrenewed, the account is on Free)."""


def plan_on(spans: Iterable[PlanSpan], when: datetime) -> str:
    current = max((s for s in spans if s[0] <= when), default=None, key=lambda s: (s[0], s[1]))
    if current is None or (current[2] is not None and when >= current[2]):
        return FREE
    return current[1]


def shared_clients(clients: list[ClientUse]) -> dict[str, list[AbuseSignal]]:
    by_client: dict[str, dict[str, list[ClientUse]]] = defaultdict(lambda: defaultdict(list))
    for use in clients:
        by_client[use.client_hash][use.account_id].append(use)
    signals: dict[str, list[AbuseSignal]] = defaultdict(list)
    for client, accounts in by_client.items():
        if len(accounts) < SHARED_MIN_ACCOUNTS:
            continue
        calls = {account: sum(u.calls for u in uses) for account, uses in accounts.items()}
        for account, uses in accounts.items():
            signals[account].append(
                AbuseSignal(
                    kind="shared_client_address",
                    score=min(60, 15 * (len(accounts) - 1)),
                    summary=f"one client address called for {len(accounts)} accounts",
                    first_seen=min(u.first_seen for u in uses),
                    last_seen=max(u.last_seen for u in uses),
                    count=calls[account],
                    accounts=sorted(a for a in accounts if a != account),
                    details={
                        "client_hash": client[:16],
                        "calls_by_account": [f"{a}={calls[a]}" for a in sorted(calls)],
                        "first_seen_by_account": [
                            f"{a}={min(u.first_seen for u in accounts[a]).isoformat()}" for a in sorted(accounts)
                        ],
                    },
                )
            )
    return signals


def around_the_clock(
    hours: list[HourUse], plans: Mapping[str, list[PlanSpan]], weekly_caps: Mapping[str, int]
) -> dict[str, list[AbuseSignal]]:
    days: dict[tuple[str, date], list[HourUse]] = defaultdict(list)
    for use in hours:
        days[(use.account_id, use.hour.date())].append(use)
    near_cap: dict[str, list[tuple[date, int, int, int]]] = defaultdict(list)
    for (account, day), uses in days.items():
        noon = datetime.combine(day, time(12), tzinfo=uses[0].hour.tzinfo)
        cap = weekly_caps.get(plan_on(plans.get(account, []), noon), 0) // 7
        flows = sum(u.flows_micros for u in uses)
        active = len({u.hour for u in uses})
        if active >= CLOCK_MIN_HOURS and cap > 0 and flows * CLOCK_NEAR_CAP[1] >= cap * CLOCK_NEAR_CAP[0]:
            near_cap[account].append((day, active, flows, cap))
    signals: dict[str, list[AbuseSignal]] = {}
    for account, found in near_cap.items():
        if len(found) < CLOCK_MIN_DAYS:
            continue
        found.sort()
        signals[account] = [
            AbuseSignal(
                kind="around_the_clock",
                score=min(60, 10 * len(found)),
                summary=f"{len(found)} days of use in {CLOCK_MIN_HOURS}+ hours, near the plan's daily use",
                first_seen=datetime.combine(found[0][0], time(0), tzinfo=hours[0].hour.tzinfo),
                last_seen=datetime.combine(found[-1][0], time(0), tzinfo=hours[0].hour.tzinfo) + timedelta(days=1),
                count=len(found),
                details={
                    "days": [
                        f"{day.isoformat()}: {active} h, {flows / 1e6:.2f} of {cap / 1e6:.2f} Flows"
                        for day, active, flows, cap in found
                    ]
                },
            )
        ]
    return signals


def keys_across_clients(clients: list[ClientUse]) -> dict[str, list[AbuseSignal]]:
    by_account: dict[str, list[ClientUse]] = defaultdict(list)
    for use in clients:
        if use.key_id:
            by_account[use.account_id].append(use)
    signals: dict[str, list[AbuseSignal]] = {}
    for account, uses in by_account.items():
        keys = {u.key_id for u in uses}
        addresses = {u.client_hash for u in uses}
        if len(keys) < KEYS_MIN or len(addresses) < KEYS_MIN:
            continue
        per_key = defaultdict(set)
        for u in uses:
            per_key[u.key_id].add(u.client_hash)
        signals[account] = [
            AbuseSignal(
                kind="keys_across_clients",
                score=min(40, 5 * min(len(keys), len(addresses))),
                summary=f"{len(keys)} keys used from {len(addresses)} client addresses",
                first_seen=min(u.first_seen for u in uses),
                last_seen=max(u.last_seen for u in uses),
                count=sum(u.calls for u in uses),
                details={"clients_by_key": [f"{k}={len(c)}" for k, c in sorted(per_key.items())]},
            )
        ]
    return signals


def identical_usage(hours: list[HourUse]) -> dict[str, list[AbuseSignal]]:
    """Accounts whose calls per hour are identical over PATTERN_MIN_HOURS or more active hours: by
    chance that does not happen; one script running several accounts makes it happen."""
    series: dict[str, list[HourUse]] = defaultdict(list)
    for use in hours:
        series[use.account_id].append(use)
    by_pattern: dict[tuple[tuple[datetime, int], ...], list[str]] = defaultdict(list)
    for account, uses in series.items():
        if len({u.hour for u in uses}) >= PATTERN_MIN_HOURS:
            by_pattern[tuple(sorted((u.hour, u.calls) for u in uses))].append(account)
    signals: dict[str, list[AbuseSignal]] = {}
    for pattern, alike in by_pattern.items():
        if len(alike) < 2:
            continue
        for account in alike:
            signals[account] = [
                AbuseSignal(
                    kind="identical_usage",
                    score=min(40, 20 * (len(alike) - 1)),
                    summary=f"the same calls hour for hour as {len(alike) - 1} others over {len(pattern)} hours",
                    first_seen=pattern[0][0],
                    last_seen=pattern[-1][0] + timedelta(hours=1),
                    count=sum(calls for _, calls in pattern),
                    accounts=sorted(a for a in alike if a != account),
                    details={"hours": [f"{hour.isoformat()}={calls}" for hour, calls in pattern[:48]]},
                )
            ]
    return signals


def score(
    accounts: Iterable[str],
    clients: list[ClientUse],
    hours: list[HourUse],
    plans: Mapping[str, list[PlanSpan]],
    weekly_caps: Mapping[str, int],
    min_score: int,
) -> list[AccountAbuse]:
    """Every account scoring at least min_score, highest first (then by id), each signal with its evidence."""
    found: dict[str, list[AbuseSignal]] = defaultdict(list)
    rules = (
        shared_clients(clients),
        around_the_clock(hours, plans, weekly_caps),
        keys_across_clients(clients),
        identical_usage(hours),
    )
    for rule in rules:
        for account, signals in rule.items():
            found[account] += signals
    listed = [
        AccountAbuse(
            account_id=account,
            score=min(MAX_SCORE, sum(s.score for s in found.get(account, []))),
            signals=sorted(found.get(account, []), key=lambda s: -s.score),
        )
        for account in set(accounts) | set(found)
    ]
    return sorted((a for a in listed if a.score >= min_score), key=lambda a: (-a.score, a.account_id))
