-- Logins started at the OpenID provider and not finished yet: the callback takes its row (once).
CREATE TABLE sso_logins (
    state         text PRIMARY KEY,
    nonce         text NOT NULL,
    code_verifier text NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sso_logins_expiry ON sso_logins (expires_at);
