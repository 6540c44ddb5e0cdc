-- Suspended accounts (AccountSuspended / AccountUnsuspended): key.lookup says so, and the
-- gateway and the account API refuse the account's keys with 403 account_suspended.
CREATE TABLE keys.access (
    account_id text PRIMARY KEY,
    suspended boolean NOT NULL,
    since timestamptz NOT NULL,
    applied_events text[] NOT NULL DEFAULT '{}'
);
