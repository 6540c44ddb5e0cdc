-- Each account's latest insider mark (InsiderStatusSet) and when a lapse to Free ended it
-- (InsiderStatusEnded): billing looks for the lapse of the marks still in force.
CREATE TABLE billing.insiders (
    account_id text PRIMARY KEY,
    status_id text NOT NULL,
    marked_at timestamptz NOT NULL,
    insider boolean NOT NULL,
    ended_at timestamptz
);
