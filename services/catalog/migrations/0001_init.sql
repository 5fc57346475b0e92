-- Entities as ingested (Backstage envelope), one row per (scope, canonical ref).
CREATE TABLE entities (
    uid         uuid PRIMARY KEY,
    scope       text NOT NULL,
    ref         text NOT NULL,          -- canonical `kind:namespace/name`, lower-case
    kind        text NOT NULL,
    namespace   text NOT NULL,
    name        text NOT NULL,
    document    jsonb NOT NULL,         -- apiVersion, kind, metadata (without uid/etag/generation), spec
    etag        text NOT NULL,
    generation  int NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, ref)
);

-- Relations emitted by an entity's spec, both directions; `originator` is the entity that emitted them, so
-- they go away with it. A target need not exist.
CREATE TABLE relations (
    originator  uuid NOT NULL REFERENCES entities (uid) ON DELETE CASCADE,
    scope       text NOT NULL,
    source_ref  text NOT NULL,
    type        text NOT NULL,
    target_ref  text NOT NULL,
    PRIMARY KEY (originator, source_ref, type, target_ref)
);
CREATE INDEX relations_by_source ON relations (scope, source_ref);

-- Backstage's search table: the (key, value) rows `filter` queries match against.
CREATE TABLE search (
    entity_uid     uuid NOT NULL REFERENCES entities (uid) ON DELETE CASCADE,
    key            text NOT NULL,
    value          text,
    original_value text
);
CREATE INDEX search_by_key_value ON search (key, value);
CREATE INDEX search_by_entity ON search (entity_uid);
