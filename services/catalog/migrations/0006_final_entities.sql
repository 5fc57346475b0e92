-- The entity as served (Backstage's `final_entities`): its stitched JSON, written whenever the entity or a
-- relation touching it changes, so reads send stored bytes instead of stitching and encoding per request.
-- NULL until stitched; entities stored before this migration are stitched when the catalog starts.
ALTER TABLE entities ADD COLUMN final_entity text;
-- Weighted full-text document (`simple` configuration, no stemming: names and tags are identifiers):
-- A name and title, B tags and owner, C description, D annotation values. Ranked search and by-query's
-- fullTextFilter match it with prefix queries through the GIN index.
ALTER TABLE entities ADD COLUMN search_text tsvector NOT NULL DEFAULT ''::tsvector;
CREATE INDEX entities_search_text ON entities USING gin (search_text);
