-- Each plan change with its effective time and paid period: a payment's timing (at once,
-- or at the end of the paid period for a downgrade) depends on the subscription in force.
CREATE TABLE ingress.subscriptions (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    effective_at timestamptz NOT NULL,
    plan text NOT NULL,
    paid_until timestamptz
);
CREATE INDEX subscriptions_account ON ingress.subscriptions (account_id, effective_at);
