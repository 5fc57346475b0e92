-- A filtered page whose filter pins the kind walks the kind's entities at one scope in ref order and stops after
-- a page, instead of reading and sorting every match (`store.query_entities`). `kind` is the lower-cased kind
-- of `ref`, so the walk orders as `ref` does under any collation.
CREATE INDEX entities_by_scope_kind_ref ON entities (scope, kind, ref);
