-- Access control: roles, resource groups, role bindings, policies and policy sets (issue 5).
-- One table, because every kind is written, versioned, listed and replicated the same way; `document` is
-- the kind's shared struct (shared/authz.py, shared/policy.py) as every service's replica decodes it.
CREATE TABLE access_objects (
    kind        text        NOT NULL CHECK (kind IN ('role', 'resource_group', 'role_binding', 'policy', 'policy_set')),
    id          text        NOT NULL,
    scope       text        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    document    jsonb       NOT NULL,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id),
    UNIQUE (kind, scope, name)
);

CREATE INDEX access_objects_by_scope ON access_objects (kind, scope, id);
-- What refers to a role, resource group or policy, so deleting one in use is refused.
CREATE INDEX access_objects_references ON access_objects USING gin (document jsonb_path_ops)
    WHERE kind IN ('role_binding', 'policy_set');

-- The replicated state's version: every write bumps it in its transaction (writes queue on this row, which
-- is fine for rare administrative writes), so a snapshot read with it is exactly the writes up to that
-- version, and a replica ignores events at or below it.
CREATE TABLE access_state (
    id      int    PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO access_state VALUES (1, 0);
