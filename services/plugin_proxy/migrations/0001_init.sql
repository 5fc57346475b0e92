-- Named proxy endpoints. `spec` holds secret references, never secret values; `version` is the ETag.
CREATE TABLE endpoints (
    name       text PRIMARY KEY,
    spec       jsonb NOT NULL,
    origin     text NOT NULL CHECK (origin IN ('api', 'file')),
    version    int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Delegate agents. Only the SHA-256 of a token is kept; the token itself is shown once when minted.
CREATE TABLE agents (
    id          text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Replicas of an agent as their heartbeats report them; `disconnected_at` is set once a replica falls silent.
CREATE TABLE agent_instances (
    agent_id        text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    instance        text NOT NULL,
    version         text NOT NULL,
    tags            text[] NOT NULL,
    allowlist_hash  text NOT NULL,
    connected_at    timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    disconnected_at timestamptz,
    PRIMARY KEY (agent_id, instance)
);
CREATE INDEX agent_instances_heartbeat ON agent_instances (last_heartbeat) WHERE disconnected_at IS NULL;
