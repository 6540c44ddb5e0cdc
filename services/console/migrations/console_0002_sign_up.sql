-- Sign-up: an owner's email is confirmed by a link sent by mail (a paid checkout needs it);
-- a one-time sign-in link, which reached the owner, confirms it too. Sign-ups are counted per
-- client address (a limit per hour).
ALTER TABLE console.owners ADD COLUMN email_confirmed_at timestamptz;

CREATE TABLE console.email_confirmations (
    token_hash text PRIMARY KEY,
    account_id text NOT NULL REFERENCES console.owners (account_id),
    email text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);

CREATE TABLE console.sign_ups (
    address text NOT NULL,
    signed_up_at timestamptz NOT NULL
);
CREATE INDEX sign_ups_address ON console.sign_ups (address, signed_up_at);
