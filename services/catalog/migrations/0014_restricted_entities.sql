-- The restricted entities (tagged hidden, private or secrets: services/catalog/visibility.py), so that the
-- visibility filter of a caller who may not see them all reads their uids from this small index alone instead
-- of fetching each row. The predicate is the one `store.RESTRICTED_SQL` writes, character for character.
CREATE INDEX entities_restricted ON entities (uid)
    WHERE search_tokens && ARRAY[E'metadata.tags\x1fhidden', E'metadata.tags\x1fprivate', E'metadata.tags\x1fsecrets'];
