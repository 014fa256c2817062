-- The rows validation skipped (duplicates, opted out then), kept with its other counts: a
-- validation that finds the batch's ledger already made answers them again
-- (activities/validation.py), where the ledger's `skipped` rows by then also count those a
-- slice's claim skipped (opted out since). NULL: validated before this migration.
ALTER TABLE batches ADD COLUMN validated_skipped int;
