-- One row per run of a sync source (CSV, Backstage YAML, LDAP): what it changed and what it skipped.
CREATE TABLE sync_runs (
    id          uuid PRIMARY KEY,
    source      text NOT NULL,
    strategy    text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    created     int NOT NULL,
    updated     int NOT NULL,
    unchanged   int NOT NULL,
    deactivated int NOT NULL,
    deleted     int NOT NULL,
    issues      jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX sync_runs_source ON sync_runs (source, started_at DESC);
CREATE INDEX users_source ON users (source);
CREATE INDEX groups_source ON groups (source);
