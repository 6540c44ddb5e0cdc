-- The pay-as-you-go side of admission: the balance as a ledger (top-ups credit, PAYG
-- usage debits; the balance is always its sum) and each account's Extra Usage setting.
CREATE TABLE quota.ledger (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    amount_micros bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('top_up', 'payg_usage')),
    occurred_at timestamptz NOT NULL
);
CREATE INDEX ledger_account ON quota.ledger (account_id);

ALTER TABLE quota.accounts ADD COLUMN extra_usage boolean NOT NULL DEFAULT false;
ALTER TABLE quota.accounts ADD COLUMN payg_key_id text;
