-- A refund counts the subscription usage of the refunded payment's own period: usage keeps its
-- billing mode (PAYG calls were paid from the balance already), and a plan change names the
-- payment that bought it (its period is effective_at .. paid_until).
ALTER TABLE refund.usage ADD COLUMN billing_mode text NOT NULL DEFAULT 'subscription';
ALTER TABLE refund.plans ADD COLUMN payment_ref text;
CREATE INDEX plans_payment ON refund.plans (account_id, payment_ref);

-- Fill both again from the log: the projection starts over from the first event (the rows it
-- writes are keyed by event id or refund id, and settled refunds never change, so the events it
-- applied already change nothing the second time; a refund request waits at the barrier meanwhile).
TRUNCATE refund.usage, refund.plans;
DELETE FROM refund.checkpoints WHERE projection = 'refund';
