-- billing's projection: every money event of an account, and usage aggregated per
-- account, UTC day and model for cost analysis (each usage event counted once).
CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE billing.checkpoints (
    projection text NOT NULL,
    partition integer NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);

CREATE TABLE billing.history (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('payment', 'plan_change', 'top_up', 'refund')),
    occurred_at timestamptz NOT NULL,
    amount_micros bigint NOT NULL DEFAULT 0,
    plan text,
    previous_plan text,
    reference text
);
CREATE INDEX history_account ON billing.history (account_id, occurred_at DESC);

CREATE TABLE billing.usage_seen (
    event_id text PRIMARY KEY
);

CREATE TABLE billing.costs (
    account_id text NOT NULL,
    day date NOT NULL,
    model text NOT NULL,
    calls bigint NOT NULL,
    flows_micros bigint NOT NULL,
    usd_micros bigint NOT NULL,
    PRIMARY KEY (account_id, day, model)
);
