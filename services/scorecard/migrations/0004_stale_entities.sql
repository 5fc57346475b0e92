-- Entities whose change could not be read from the catalog (it was unreachable): read again later, so an
-- outage delays their evaluation instead of losing it.
CREATE TABLE stale_entities (
    uid    uuid PRIMARY KEY,
    since  timestamptz NOT NULL DEFAULT now()
);
