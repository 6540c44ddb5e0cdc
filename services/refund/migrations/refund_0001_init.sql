-- refund's projection: what a refund needs to know (payments, plan changes, the usage
-- since each payment), the refunds themselves, and the local payment provider's payouts.
-- Command paths write refunds and payouts at once (read-your-writes; the unique indexes are
-- what makes a payout happen once); the projection writes the same rows from the events.
CREATE SCHEMA IF NOT EXISTS refund;

CREATE TABLE refund.checkpoints (
    projection text NOT NULL,
    partition integer NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (projection, partition)
);

CREATE TABLE refund.payments (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    payment_ref text NOT NULL,
    plan text NOT NULL,
    amount_micros bigint NOT NULL,
    paid_at timestamptz NOT NULL
);
CREATE INDEX payments_account ON refund.payments (account_id, paid_at DESC);

CREATE TABLE refund.plans (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    plan text NOT NULL,
    effective_at timestamptz NOT NULL,
    paid_until timestamptz
);
CREATE INDEX plans_account ON refund.plans (account_id, effective_at DESC);

-- Each usage event once, with its stream sequence: a refund counts the usage stored before
-- it was asked for (seq <= cutoff) and that of the calls then in flight (by reservation).
CREATE TABLE refund.usage (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    seq bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    usd_cost_micros bigint NOT NULL,
    reservation_id text
);
CREATE INDEX usage_account ON refund.usage (account_id, occurred_at);

CREATE TABLE refund.refunds (
    refund_id text PRIMARY KEY,
    account_id text NOT NULL,
    payment_ref text NOT NULL,
    plan text NOT NULL,
    paid_at timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed', 'cancelled')),
    requested_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    cutoff_seq bigint NOT NULL,
    pending_reservations text[] NOT NULL,
    paid_micros bigint NOT NULL,
    usage_micros bigint NOT NULL,
    refunded_before_micros bigint NOT NULL,
    fee_micros bigint NOT NULL,
    amount_micros bigint NOT NULL,
    reason text,
    payout_id text
);
-- At most one refund of a payment is being processed or has succeeded: concurrent or
-- repeated requests lose here, in the database, not only in a check in code.
CREATE UNIQUE INDEX refunds_one_per_payment ON refund.refunds (account_id, payment_ref)
    WHERE status IN ('processing', 'succeeded');
CREATE INDEX refunds_account ON refund.refunds (account_id, requested_at DESC);

-- The local payment provider's books: one payout per idempotency key.
CREATE TABLE refund.payouts (
    idempotency_key text PRIMARY KEY,
    payout_id text NOT NULL UNIQUE,
    account_id text NOT NULL,
    refund_id text NOT NULL,
    amount_micros bigint NOT NULL,
    provider text NOT NULL,
    paid_at timestamptz NOT NULL
);
