-- Relation targets across scopes (design.md §5, visible from below): a project's component may be owned by an
-- org's group. Each row's source lives at `scope` and its target at `target_scope`; until now both were the
-- emitting entity's scope.
ALTER TABLE relations ADD COLUMN target_scope text;
UPDATE relations SET target_scope = scope;
ALTER TABLE relations ALTER COLUMN target_scope SET NOT NULL;
ALTER TABLE relations DROP CONSTRAINT relations_pkey;
ALTER TABLE relations ADD PRIMARY KEY (originator, scope, source_ref, type, target_scope, target_ref);
-- Finds the references whose resolution a new or deleted entity may change. Rows with both ends at `account`
-- can never resolve elsewhere, so a catalog kept at `account` pays nothing for this index.
CREATE INDEX relations_by_target ON relations (target_ref) WHERE scope <> 'account' OR target_scope <> 'account';
