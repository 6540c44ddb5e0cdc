-- A paid plan runs until the end of its paid period; past it, unrenewed, the account is on Free.
ALTER TABLE quota.plan_history ADD COLUMN paid_until timestamptz;
