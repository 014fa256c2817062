-- Which send attempt marked a row `sending` (a random token of that activity attempt), so
-- that the attempt can tell its own marks from another's when it writes the same wave again.
-- A wave's write (messages.write_outcomes) is run again when PostgreSQL closes the connection
-- in the middle of it (activities/outages.py); if the first run had committed, the second
-- found its rows already `sending` and took them for another attempt's, so they were never
-- sent and ended `uncertain` (issue 21: a PostgreSQL restart must not strand a slice).
-- Nullable with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN marked_by bigint;
