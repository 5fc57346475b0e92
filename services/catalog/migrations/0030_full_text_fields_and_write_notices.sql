-- Full-text `by-query` on the fields Backstage's entity list searches (`EntityTextFilter`: name, title, profile
-- display name): the substring match (`value LIKE '%term%'`) is answered from trigrams of those search rows, so a
-- page reads only the entities that match instead of checking every entity with a word starting like the term.
-- `store.TRIGRAM_KEYS` repeats this list, and queries name the keys as literals, so the planner can prove the
-- partial predicate.
CREATE INDEX search_value_trigrams ON search USING gin (value gin_trgm_ops)
    WHERE key IN ('metadata.name', 'metadata.title', 'spec.profile.displayname');

-- Every replica keeps a cache of served entities (`read_cache.py`), dropped when any transaction that wrote
-- `entities` commits: the generation bump of migration 0012 also notifies `<schema>.entities_written`, delivered
-- to listeners at commit.
CREATE OR REPLACE FUNCTION bump_write_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction, however many rows it wrote; the schema is the table's, whatever the search path.
    IF current_setting('catalog.write_generation_bumped', true) IS DISTINCT FROM 'on' THEN
        EXECUTE format('UPDATE %I.write_generation SET value = value + 1', TG_TABLE_SCHEMA);
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.entities_written', '');
        PERFORM set_config('catalog.write_generation_bumped', 'on', true);
    END IF;
    RETURN NULL;
END
$$;
