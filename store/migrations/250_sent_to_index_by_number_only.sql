-- The index of sent rows by recipient (142) answers only lookups by number. Its predicate was
-- `carrier_sid IS NOT NULL`, which every lookup by carrier sid implies, so the planner could
-- take it for one: a read of every sent row of the ledger, filtered by sid. It did whenever
-- the statistics of `carrier_sid` were older than the sends (sampled when a batch's rows had
-- no sid yet, as validation does): the receipt applier's claim then took 1.46 s a call in
-- `make bench` at 100,000 rows, 270,000 blocks each. `to_number IS NOT NULL` holds for every
-- row; a lookup by number implies it, a lookup by sid does not, so only the sid's own index
-- can serve the latter.
-- Built beside the old index, which is dropped only then: the build lets the ledger be read
-- (a DROP first would hold every reader of `messages` until the migration commits).
CREATE INDEX messages_sent_to_by_number ON messages (to_number)
    WHERE carrier_sid IS NOT NULL AND to_number IS NOT NULL;
DROP INDEX messages_sent_to;
ALTER INDEX messages_sent_to_by_number RENAME TO messages_sent_to;
