-- Every event of the suite, in chain order. `seq` is assigned by the appender (not a sequence), so a
-- gap means a deleted row; `hash` = sha256(previous hash || canonical bytes of this row).
CREATE TABLE events (
    seq           bigint PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    type          text NOT NULL,
    source        text NOT NULL,
    time          timestamptz NOT NULL,
    actor_kind    text NOT NULL,
    actor_id      text NOT NULL,
    scope         text NOT NULL,
    resource_kind text NOT NULL,
    resource_id   text NOT NULL,
    trace_id      text NOT NULL DEFAULT '',
    data          jsonb NOT NULL,
    schema        int NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    hash          bytea NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE INDEX events_type ON events (type text_pattern_ops, seq);
CREATE INDEX events_actor ON events (actor_id, seq);
CREATE INDEX events_resource ON events (resource_kind, resource_id, seq);
CREATE INDEX events_scope ON events (scope text_pattern_ops, seq);
CREATE INDEX events_trace ON events (trace_id) WHERE trace_id <> '';

-- The end of the chain. Appenders lock this row, which serialises appends across audit replicas.
CREATE TABLE chain_head (
    id   int PRIMARY KEY CHECK (id = 1),
    seq  bigint NOT NULL,
    hash bytea NOT NULL
);
INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, '\x'::bytea);

-- Written by retention pruning: the chain after `seq` verifies starting from `hash`.
CREATE TABLE checkpoints (
    seq       bigint PRIMARY KEY,
    hash      bytea NOT NULL,
    pruned    bigint NOT NULL,
    pruned_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE settings (
    id             int PRIMARY KEY CHECK (id = 1),
    retention_days int NOT NULL,
    version        int NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings (id, retention_days, version) VALUES (1, 365, 1);
