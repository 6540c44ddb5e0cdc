-- One usage event as billing's projection counts it (projection.py `_count_usage`): a batch goes to
-- Postgres as ONE array of these rather than as eleven column arrays. asyncpg checks every element of
-- every array parameter against three ABCs in Python, so the columns cost about 17 such checks per
-- event, a row about 4; Postgres decodes one array instead of eleven. The fields are UsageRecorded's
-- own names, read in one C call per event. The type stays in this schema: a rebuild copies the
-- projection's tables into a fresh schema, and its statements name this type where it is.
CREATE TYPE billing.usage_event AS (
    event_id text,
    account_id text,
    occurred_at timestamptz,
    model text,
    billing_mode text,
    flows_micros bigint,
    usd_cost_micros bigint,
    key_id text,
    client_hash text,
    agent_hash text,
    hour timestamptz            -- abuse_hours' hour, sent only for an event time not in UTC (NULL: cut in UTC)
);
