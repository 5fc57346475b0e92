-- Extra properties set through the ingestion API ({path: value}), overlaid on the document when served; kept
-- apart from `document` so a location refresh replaces the YAML's part and the overlay survives.
ALTER TABLE entities ADD COLUMN properties jsonb NOT NULL DEFAULT '{}';
