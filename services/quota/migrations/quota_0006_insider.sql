-- Insider status over time: marks by the operator (InsiderStatusSet) and the lapse that ends
-- it for good (InsiderStatusEnded, insider false from the lapse on). Admission prices with it
-- and the explicit multipliers (libs/pricing/multipliers.py), as ingress does.
CREATE TABLE quota.insider (
    event_id text PRIMARY KEY,
    account_id text NOT NULL,
    effective_at timestamptz NOT NULL,
    insider boolean NOT NULL
);
