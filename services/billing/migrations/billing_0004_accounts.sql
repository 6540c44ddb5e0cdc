-- When each account was created: a payment dated earlier takes effect from the account's creation
-- (a plan cannot be in force before its account).
CREATE TABLE billing.accounts (
    account_id text PRIMARY KEY,
    created_at timestamptz NOT NULL
);

-- A scheduled plan change withdrawn before it took effect (its payment refunded): kept, so that
-- the payment sent again is still answered as recorded, but no longer decided from.
ALTER TABLE billing.subscriptions ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;

-- Fill it from the log: the projection starts again from the first event. Everything else it
-- writes is keyed by event id (history, ledger, usage_seen, subscriptions), so the events it
-- applied already change nothing the second time.
DELETE FROM billing.checkpoints WHERE projection = 'billing';
