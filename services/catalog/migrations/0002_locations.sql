-- Registered locations (Backstage's `locations`); `errors` holds the problems of the last read, so a bad
-- document or a conflict is reported on its location while the rest still ingests.
CREATE TABLE locations (
    id           uuid PRIMARY KEY,
    scope        text NOT NULL,
    type         text NOT NULL,
    target       text NOT NULL,
    errors       jsonb NOT NULL DEFAULT '[]',
    refreshed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (scope, type, target)
);

-- Which location emits an entity (NULL for entities written through the Entity API), its Backstage location
-- key (first writer wins on conflicts), and whether its source stopped emitting it.
ALTER TABLE entities ADD COLUMN location_id uuid REFERENCES locations (id) ON DELETE SET NULL;
ALTER TABLE entities ADD COLUMN location_key text;
ALTER TABLE entities ADD COLUMN orphan boolean NOT NULL DEFAULT false;
CREATE INDEX entities_by_location ON entities (location_id);
