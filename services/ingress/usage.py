"""Usage records in: strict decoding, validation that names the record and field, pricing.

Everything about a batch is checked before anything of it is stored: one bad record
refuses the whole batch with a 400 that says which record and which field.

A client's event_id is its own: two metering clients may both send "1", for one account or
for two. The event stored is named `<client>/<account_id>/<event_id>`: scoped by the ingest
client (named by its token) and the account, and in a namespace of its own, since no id
the platform derives (gateway reservations `gw_…`, uuids of top-ups, payments, refunds)
holds a "/", and neither may a client's event_id or client name.
"""

import functools
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Literal

import asyncpg
import msgspec

from libs.eventlog.subjects import ACCOUNT_TOKEN
from libs.pricing.catalog import Catalog
from libs.pricing.usage import usage_recorded
from libs.web import ApiError, decode_body
from proto.v1 import UsageRecorded
from services.ingress.directory import Directory

Tokens = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_CLIENT = "default"
"""The client that FLOWPLAN_INGEST_TOKEN names."""
MAX_CALL_MICROS = 10**13
"""The most one call may cost, in micro-USD or micro-Flows (10 million): far above any real call,
and far enough below Postgres's bigint that sums of calls cannot overflow."""


@functools.cache
def ingest_clients(default_token: str, named: str) -> dict[str, str]:
    """token -> client name, from FLOWPLAN_INGEST_TOKEN (the client "default") and
    FLOWPLAN_INGEST_TOKENS ("name=token,name=token")."""
    clients = {default_token: DEFAULT_CLIENT} if default_token else {}
    for pair in filter(None, (p.strip() for p in named.split(","))):
        name, sep, token = (part.strip() for part in pair.partition("="))
        if not sep or not CLIENT_NAME.match(name) or not token:
            raise ValueError(
                f"FLOWPLAN_INGEST_TOKENS: want name=token pairs (names {CLIENT_NAME.pattern}), got {name!r}"
            )
        if name in clients.values() or token in clients:
            raise ValueError(f"FLOWPLAN_INGEST_TOKENS: client {name!r} or its token appears twice")
        clients[token] = name
    return clients


def client_of(token: str, clients: Mapping[str, str]) -> str | None:
    """The ingest client the token names; every token is compared, in constant time."""
    found = None
    for known, name in clients.items():
        if secrets.compare_digest(token.encode(), known.encode()):
            found = name
    return found


def stored_event_id(client: str, account_id: str, event_id: str) -> str:
    return f"{client}/{account_id}/{event_id}"


def client_event_id(stored: str) -> str:
    """The id the client sent, from a stored id (derived ids are their own)."""
    return stored.rsplit("/", 1)[-1]


class UsageIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    event_id: EventId
    account_id: Annotated[str, msgspec.Meta(pattern=ACCOUNT_TOKEN.pattern)]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    input_tokens: Tokens
    output_tokens: Tokens
    billing_mode: Literal["subscription", "payg"]
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    cached_tokens: Tokens = 0
    images: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0


class UsageBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[UsageIn]


def decode_batch(body: bytes, max_events: int) -> list[UsageIn]:
    batch = decode_body(body, UsageBatch)
    if not batch.events:
        raise ApiError(400, "invalid_request", "events must hold at least one record", "events")
    if len(batch.events) > max_events:
        raise ApiError(413, "batch_too_large", f"at most {max_events} events per request", "events")
    return batch.events


def price_batch(
    records: list[UsageIn],
    catalog: Catalog,
    directory: Directory,
    now: datetime,
    lateness: timedelta,
    lead: timedelta,
    client: str = DEFAULT_CLIENT,
) -> list[UsageRecorded]:
    """Check what the types cannot (catalog, accounts, time bounds, a price that fits) and price
    every record, naming each event by its client and account."""
    seen: set[tuple[str, str]] = set()
    priced = []
    for i, r in enumerate(records):

        def bad(field: str, message: str, i: int = i) -> ApiError:
            return ApiError(400, "invalid_request", f"record {i}: {field}: {message}", f"events[{i}].{field}")

        if (r.account_id, r.event_id) in seen:
            raise bad("event_id", f"{r.event_id!r} appears twice in this batch for {r.account_id}")
        seen.add((r.account_id, r.event_id))
        model = catalog.models.get(r.model)
        if model is None:
            raise bad("model", f"unknown model {r.model!r}; GET /v1/models lists them")
        account = directory.accounts.get(r.account_id)
        if account is None:
            raise bad("account_id", f"unknown account {r.account_id!r}")
        if r.occurred_at < now - lateness:
            raise bad("occurred_at", f"older than the accepted lateness of {lateness.days} days")
        if r.occurred_at > now + lead:
            raise bad("occurred_at", f"more than {int(lead.total_seconds() // 60)} minutes in the future")
        if r.images and model.kind != "image":
            raise bad("images", f"{r.model} does not generate images")
        event = usage_recorded(
            model, event_id=stored_event_id(client, r.account_id, r.event_id), account_id=r.account_id,
            occurred_at=r.occurred_at, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
            cached_tokens=r.cached_tokens, images=r.images, billing_mode=r.billing_mode, key_id=r.key_id,
            usd_per_flow=directory.flow_rate.at(r.occurred_at), multiplier=directory.multiplier(account, r.occurred_at),
            source="ingress",
        )  # fmt: skip
        if max(event.usd_cost_micros, event.flows_micros) > MAX_CALL_MICROS:
            largest = max(("input_tokens", "output_tokens", "cached_tokens", "images"), key=lambda f: getattr(r, f))
            raise bad(largest, f"prices the call at more than {MAX_CALL_MICROS // 10**6:,} USD or Flows")
        priced.append(event)
    return priced


async def claim(conn: asyncpg.Connection, events: list[UsageRecorded], client: str) -> list[UsageRecorded]:
    """Claim the events' ids in the long dedupe window; return the events not seen before.

    Ids claimed before they were scoped (no "/") were all the one ingest token's, the client
    "default": until they age out of the window (FLOWPLAN_DEDUPE_RETENTION_S), the default client
    sending one of them again is still a duplicate, so a retry across the upgrade counts once."""
    rows = await conn.fetch(
        """INSERT INTO ingress.seen_events (event_id) SELECT unnest($1::text[])
           ON CONFLICT DO NOTHING RETURNING event_id""",
        [e.event_id for e in events],
    )
    claimed = {row["event_id"] for row in rows}
    if client == DEFAULT_CLIENT and claimed:
        legacy = await conn.fetch(
            "SELECT event_id FROM ingress.seen_events WHERE event_id = ANY($1::text[])",
            [client_event_id(event_id) for event_id in claimed],
        )
        seen_before = {row["event_id"] for row in legacy}
        claimed = {event_id for event_id in claimed if client_event_id(event_id) not in seen_before}
    return [e for e in events if e.event_id in claimed]
