-- quota's projection: accounts and their plan history, every usage event (the long
-- dedupe window and the per-call detail), and the windows that usage falls in.
CREATE SCHEMA IF NOT EXISTS quota;

CREATE TABLE quota.checkpoints (
    projection text NOT NULL,
    partition integer NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);

CREATE TABLE quota.accounts (
    account_id text PRIMARY KEY,
    created_at timestamptz NOT NULL
);

CREATE TABLE quota.plan_history (
    event_id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES quota.accounts (account_id),
    effective_at timestamptz NOT NULL,
    plan text NOT NULL,
    period_anchor timestamptz NOT NULL
);
CREATE INDEX plan_history_account ON quota.plan_history (account_id, effective_at);

CREATE TABLE quota.usage (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    model text NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    images bigint NOT NULL,
    billing_mode text NOT NULL,
    key_id text,
    usd_cost_micros bigint NOT NULL,
    flows_micros bigint NOT NULL,
    usd_per_flow text NOT NULL,
    multiplier text NOT NULL,
    stream_seq bigint NOT NULL
);
CREATE INDEX usage_account_time ON quota.usage (account_id, occurred_at);

CREATE TABLE quota.windows (
    account_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('5h', 'week', 'month')),
    started_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    flows_micros bigint NOT NULL,
    PRIMARY KEY (account_id, kind, started_at)
);
CREATE INDEX windows_account_end ON quota.windows (account_id, kind, ends_at);
