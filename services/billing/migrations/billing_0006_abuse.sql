-- The abuse signals' evidence (services/billing/abuse.py), counted once per usage event with the
-- costs: who called from where (the gateway's keyed hashes of the client's address and user agent,
-- never the address), and each account's subscription use per hour.
CREATE TABLE billing.abuse_clients (
    account_id text NOT NULL,
    key_id text NOT NULL,          -- '' for a call without a key
    client_hash text NOT NULL,
    agent_hash text NOT NULL,      -- '' without a User-Agent
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    calls bigint NOT NULL,
    PRIMARY KEY (account_id, key_id, client_hash, agent_hash)
);
CREATE INDEX abuse_clients_client ON billing.abuse_clients (client_hash, last_seen);

CREATE TABLE billing.abuse_hours (
    account_id text NOT NULL,
    hour timestamptz NOT NULL,
    calls bigint NOT NULL,
    flows_micros bigint NOT NULL,
    PRIMARY KEY (account_id, hour)
);
CREATE INDEX abuse_hours_hour ON billing.abuse_hours (hour);
