-- A sign-up waits for its email: the form's answer is the same whether the email is new or
-- taken ("check your email"), and the account is created only from the link mailed to a new
-- email (which confirms it). The password waits here hashed, at most LINK_TTL.
CREATE TABLE console.pending_sign_ups (
    token_hash text PRIMARY KEY,
    email text NOT NULL,
    password_hash text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
