-- Entities a principal starred; they go away with the entity.
CREATE TABLE favorites (
    principal  text NOT NULL,
    entity_uid uuid NOT NULL REFERENCES entities (uid) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, entity_uid)
);
