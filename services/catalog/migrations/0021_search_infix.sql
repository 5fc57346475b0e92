-- Partial words in ranked search (`GET /search`): `illing` finds `billing-api`. The full-text document only
-- matches word starts, so the short fields (name and title, tags and owner: the full-text weights A and B) are
-- also kept as one lower-cased text under a pg_trgm index, which answers `LIKE '%illing%'` from trigrams.
-- pg_trgm is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
ALTER TABLE entities ADD COLUMN search_infix text NOT NULL DEFAULT '';
ALTER TABLE entities ALTER COLUMN search_infix SET STORAGE MAIN;
-- Entities stitched before this migration: the same text from their served JSON (stitching writes it from now on).
UPDATE entities e SET search_infix = lower(concat_ws(' ',
        served.document -> 'metadata' ->> 'name',
        served.document -> 'metadata' ->> 'title',
        (SELECT string_agg(tag, ' ') FROM jsonb_array_elements_text(
             CASE WHEN jsonb_typeof(served.document -> 'metadata' -> 'tags') = 'array'
                  THEN served.document -> 'metadata' -> 'tags' END) AS tag),
        (SELECT string_agg(split_part(relation ->> 'targetRef', '/', 2), ' ')
           FROM jsonb_array_elements(served.document -> 'relations') AS relation
          WHERE relation ->> 'type' = 'ownedBy')))
FROM (SELECT uid, final_entity::jsonb AS document FROM entities WHERE final_entity IS NOT NULL) served
WHERE e.uid = served.uid;
CREATE INDEX entities_search_infix ON entities USING gin (search_infix gin_trgm_ops);
