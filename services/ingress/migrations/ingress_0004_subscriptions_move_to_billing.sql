-- Payments are decided by billing now, from its own subscriptions table; ingress prices usage
-- without the plan.
DROP TABLE IF EXISTS ingress.subscriptions;
