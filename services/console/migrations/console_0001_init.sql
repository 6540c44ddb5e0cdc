-- The console's own state: the accounts' owners and their credentials, one-time sign-in links,
-- sessions and failed sign-ins. Secrets are never stored: links and session ids as SHA-256,
-- passwords as argon2id hashes.
CREATE SCHEMA IF NOT EXISTS console;

CREATE TABLE console.owners (
    account_id text PRIMARY KEY,
    email text UNIQUE,
    password_hash text,
    created_at timestamptz NOT NULL,
    password_set_at timestamptz
);

CREATE TABLE console.sign_in_links (
    link_hash text PRIMARY KEY,
    account_id text NOT NULL REFERENCES console.owners (account_id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX sign_in_links_account ON console.sign_in_links (account_id);

CREATE TABLE console.sessions (
    session_hash text PRIMARY KEY,
    account_id text NOT NULL REFERENCES console.owners (account_id),
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    ended_at timestamptz
);
CREATE INDEX sessions_account ON console.sessions (account_id);

-- Wrong passwords, per email and per client address: what slows and then locks sign-in.
CREATE TABLE console.sign_in_failures (
    scope text NOT NULL,
    subject text NOT NULL,
    failed_at timestamptz NOT NULL
);
CREATE INDEX sign_in_failures_subject ON console.sign_in_failures (scope, subject, failed_at);
