-- Lines of an uploaded file, counted as it is stored (issue 16): a batch request refuses a
-- file over the row limit before it is accepted. NULL for files stored before the count.
ALTER TABLE files ADD COLUMN line_count bigint;
