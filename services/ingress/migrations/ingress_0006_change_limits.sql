-- The account API's change limit (services/ingress/changes.py), shared by every ingress instance:
-- per account the theoretical arrival time of its next change (GCRA). Before, each instance
-- counted in its own memory, so N instances let an account make N times the changes.
CREATE TABLE ingress.change_limits (
    account_id text PRIMARY KEY,
    tat timestamptz NOT NULL
);
