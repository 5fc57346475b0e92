-- Relation rows are derived: an entity's writes replace the rows it emits (`store.replace_relations` deletes them by
-- originator and inserts them deduplicated) and its delete deletes them (`store.delete_entities`). The foreign key
-- looked up and row-locked the originating entity for every row, and the six-column primary key kept a wide index
-- of every row; at 850,000 relations they were most of a bulk load's COPY into `relations`. Rows are found by
-- originator through a narrow index instead.
ALTER TABLE relations DROP CONSTRAINT relations_originator_fkey;
ALTER TABLE relations DROP CONSTRAINT relations_pkey;
CREATE INDEX relations_by_originator ON relations (originator);
