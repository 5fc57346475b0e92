-- Search rows are found by entity, and by key: facets, ordering's and full text's keys, `$hasPrefix`. The (key, value)
-- order served only a `$hasPrefix` range, and cost a bulk load more than the rows themselves: values being nearly
-- all distinct, every row was an entry of its own (4 µs per row, against 1.5 µs for the row in the heap; 3.2 million
-- rows and 115 MB at 100,000 entities). Indexed by key alone, a key's entries deduplicate into posting lists (2 µs
-- per row, a tenth of the size). A `$hasPrefix` now checks the rows of its key, or uses the trigram index where the
-- key has one (migration 0030).
DROP INDEX search_by_key_value;
CREATE INDEX search_by_key ON search (key);
