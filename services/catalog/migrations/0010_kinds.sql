-- Custom kinds: a JSON Schema (and the spec fields that emit relations) per kind and apiVersion. Entities of
-- kinds that are neither built in nor registered here are refused.
CREATE TABLE kinds (
    kind_key    text NOT NULL,          -- lower-cased kind: lookups are case-insensitive like entity refs
    api_version text NOT NULL,
    kind        text NOT NULL,          -- as registered, e.g. `AiResource`
    schema      jsonb NOT NULL,
    relations   jsonb NOT NULL DEFAULT '[]',
    etag        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind_key, api_version)
);
