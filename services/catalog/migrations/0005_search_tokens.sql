-- One GIN-indexed array of the search rows per entity (`key<US>value`, and `key<US>` for "has the key"), so a
-- Backstage filter is a containment test on one index instead of semi-joins over `search` per key.
ALTER TABLE entities ADD COLUMN search_tokens text[] NOT NULL DEFAULT '{}';
UPDATE entities e SET search_tokens = t.tokens
FROM (
    SELECT entity_uid, array_agg(DISTINCT token) AS tokens
    FROM (SELECT entity_uid, key || chr(31) AS token FROM search
          UNION ALL
          SELECT entity_uid, key || chr(31) || value FROM search WHERE value IS NOT NULL) rows
    GROUP BY entity_uid
) t
WHERE t.entity_uid = e.uid;
CREATE INDEX entities_search_tokens ON entities USING gin (search_tokens);
