-- ingress's own tables: the long dedupe window of usage event ids, and a projection of
-- what pricing and authentication need (accounts, keys, multipliers, Flow rates).
CREATE SCHEMA IF NOT EXISTS ingress;

CREATE TABLE ingress.checkpoints (
    projection text NOT NULL,
    partition integer NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- A usage event id seen here is not published again for as long as the row lives
-- (FLOWPLAN_DEDUPE_RETENTION_S, longer than the accepted lateness).
CREATE TABLE ingress.seen_events (
    event_id text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seen_events_seen_at ON ingress.seen_events (seen_at);

CREATE TABLE ingress.accounts (
    account_id text PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL,
    multiplier text NOT NULL,  -- in force from the start, for backfilled usage too
    plan text NOT NULL DEFAULT 'free'
);

CREATE TABLE ingress.keys (
    key_id text PRIMARY KEY,
    account_id text NOT NULL,
    key_hash text NOT NULL UNIQUE,
    kind text NOT NULL
);

CREATE TABLE ingress.multipliers (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    effective_at timestamptz NOT NULL,
    multiplier text NOT NULL
);

CREATE TABLE ingress.flow_rates (
    event_id text PRIMARY KEY,
    effective_at timestamptz NOT NULL,
    usd_per_flow text NOT NULL
);
