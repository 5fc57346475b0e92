-- by-query's `totalItems` counts every match (36,010 rows read for one filter at 100,000 entities), so counts are
-- cached per query and checked against a catalog-wide write generation. Any transaction that writes `entities`
-- bumps the generation when it commits (a deferred trigger: the row lock is held from commit time only, so long
-- location reads do not block other writers), in the same transaction as its writes: a reader that sees a
-- generation sees exactly the entity writes committed up to it, on any replica. `search` rows are only written
-- together with their entity's row (stitching, deletes), so the trigger on `entities` covers them.
CREATE TABLE write_generation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    value     bigint NOT NULL
);
INSERT INTO write_generation (value) VALUES (0);

CREATE FUNCTION bump_write_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction, however many rows it wrote; the schema is the table's, whatever the search path.
    IF current_setting('catalog.write_generation_bumped', true) IS DISTINCT FROM 'on' THEN
        EXECUTE format('UPDATE %I.write_generation SET value = value + 1', TG_TABLE_SCHEMA);
        PERFORM set_config('catalog.write_generation_bumped', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER entities_bump_write_generation
    AFTER INSERT OR UPDATE OR DELETE ON entities
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bump_write_generation();

-- Counts by query key (a hash of the count's SQL and arguments: filter, scope selection, visibility), valid while
-- `generation` is the current write generation.
CREATE TABLE count_cache (
    key        text PRIMARY KEY,
    generation bigint NOT NULL,
    total      bigint NOT NULL
);
