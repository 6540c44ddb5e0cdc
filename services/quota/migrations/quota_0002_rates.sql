-- What the gateway needs to price a call at admission: each account's multiplier
-- history and the Flow-rate history.
ALTER TABLE quota.accounts ADD COLUMN multiplier text NOT NULL DEFAULT '1';

CREATE TABLE quota.multipliers (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    effective_at timestamptz NOT NULL,
    multiplier text NOT NULL
);

CREATE TABLE quota.flow_rates (
    event_id text PRIMARY KEY,
    effective_at timestamptz NOT NULL,
    usd_per_flow text NOT NULL
);
