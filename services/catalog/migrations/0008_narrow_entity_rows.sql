-- Keep entity rows narrow: the document and the served JSON go out of line (TOAST) once a row passes 256 bytes,
-- so a filter's count and page read fewer heap pages. Columns that filters, sorts and ranking read stay in the
-- row (MAIN: moved out only past 8 kB), or every matching row would cost a TOAST lookup. The served JSON is
-- stored uncompressed: reads send it as it is.
ALTER TABLE entities SET (toast_tuple_target = 256);
ALTER TABLE entities ALTER COLUMN final_entity SET STORAGE EXTERNAL;
ALTER TABLE entities ALTER COLUMN search_tokens SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN search_text SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN scope SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN ref SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN kind SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN namespace SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN name SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN etag SET STORAGE MAIN;
ALTER TABLE entities ALTER COLUMN location_key SET STORAGE MAIN;
