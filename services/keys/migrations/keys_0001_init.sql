-- keys' projection: every key with the hash of its current secret (never the secret),
-- its state, and when it was last used.
CREATE SCHEMA IF NOT EXISTS keys;

CREATE TABLE keys.checkpoints (
    projection text NOT NULL,
    partition integer NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);

CREATE TABLE keys.keys (
    key_id text PRIMARY KEY,
    account_id text NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    prefix text NOT NULL,
    last4 text NOT NULL,
    key_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    rotated_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    applied_events text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX keys_account ON keys.keys (account_id, created_at);
