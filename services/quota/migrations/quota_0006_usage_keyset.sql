-- The per-call detail pages by keyset, (occurred_at, event_id) < (cursor), newest first
-- (GET /v1/account/usage/events?before=): an index that ends in event_id serves both the
-- order and the bound. It starts like usage_account_time, which it replaces (one index fewer
-- to write on every call).
CREATE INDEX usage_account_time_event ON quota.usage (account_id, occurred_at, event_id);
DROP INDEX quota.usage_account_time;
