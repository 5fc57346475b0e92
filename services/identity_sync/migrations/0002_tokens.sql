-- Ed25519 keys that sign access tokens. The newest unretired key signs; a retired key stays published
-- in the JWKS until the tokens it signed have expired, so rotation never rejects a live token.
CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    private_key bytea NOT NULL,
    public_jwk  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- Service-account API keys: only a hash of the secret is stored; the key is shown once at creation.
CREATE TABLE api_keys (
    id                 uuid PRIMARY KEY,
    service_account_id uuid NOT NULL REFERENCES service_accounts (id) ON DELETE CASCADE,
    name               text NOT NULL,
    secret_hash        bytea NOT NULL,
    scope              text NOT NULL,
    permissions        text[] NOT NULL DEFAULT '{}',
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    revoked_at         timestamptz,
    last_used_at       timestamptz
);
CREATE INDEX api_keys_account ON api_keys (service_account_id, created_at);

-- When a principal was deactivated or deleted, or a key revoked: credentials issued earlier are refused.
-- Every service's verifier loads the recent rows at start and hears new ones as events.
CREATE TABLE revocations (
    kind       text NOT NULL,
    id         text NOT NULL,
    revoked_at timestamptz NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_time ON revocations (revoked_at);
