-- Every plan change with its effective time and paid period: billing decides when a payment
-- takes effect (at once, or at the end of the paid month for a downgrade) from these.
CREATE TABLE billing.subscriptions (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    effective_at timestamptz NOT NULL,
    plan text NOT NULL,
    previous_plan text NOT NULL,
    paid_until timestamptz
);
CREATE INDEX subscriptions_account ON billing.subscriptions (account_id, effective_at);

-- Fill it from the log: the projection starts again from the first event. Everything else it
-- writes is keyed by event id (history, ledger, usage_seen), so the events it applied already
-- change nothing the second time.
DELETE FROM billing.checkpoints WHERE projection = 'billing';
