-- A refund can be cancelled until its payout starts (RefundPayoutStarted), not after.
ALTER TABLE refund.refunds ADD COLUMN payout_started boolean NOT NULL DEFAULT false;
