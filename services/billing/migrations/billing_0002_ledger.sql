-- The PAYG ledger as billing keeps it: top-ups credit, PAYG usage debits at list price;
-- the balance is its sum. (quota keeps its own copy in memory for admission.)
CREATE TABLE billing.ledger (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    amount_micros bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('top_up', 'payg_usage')),
    occurred_at timestamptz NOT NULL
);
CREATE INDEX ledger_account ON billing.ledger (account_id, occurred_at);
