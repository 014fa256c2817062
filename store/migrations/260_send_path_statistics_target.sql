-- Validation re-samples the send path's columns after a batch's COPY (messages.
-- refresh_statistics), on the way from the POST to the first message. At the default target
-- (100) ANALYZE takes 30,000 rows and sorts each column's values; in `make bench`'s sweep of
-- 10,000-row batches it took 15-40 ms of each batch's 85-100 ms validation as the ledger grew
-- to 50,000 rows. These columns need little: the row count, a batch's share of the ledger,
-- three statuses and sids that are all distinct. At 10 (3,000 rows) it took 3-10 ms, and
-- PostgreSQL's CPU per message at 10,000 and 20,000 rows was unchanged (the same plans).
ALTER TABLE messages
    ALTER COLUMN batch_id SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN carrier_sid SET STATISTICS 10;
