-- A batch's ledger counts by status, kept as the ledger changes (issue 21), so reading them
-- costs the same at a million rows as at a hundred. Each statement that inserts, moves or
-- deletes ledger rows adds its net change per (batch, status), once per statement, from its
-- transition tables. The changes of a database session go to rows of their own (`stripe`,
-- its backend's pid): concurrent slices of one batch never wait on, or deadlock over, the
-- same counter row. A batch's counts are the sums over its stripes: at most one row per
-- status for each session that ever wrote its ledger, whatever the ledger's size.
CREATE TABLE batch_status_counts (
    batch_id uuid NOT NULL REFERENCES batches(id),
    stripe   int NOT NULL,
    status   text NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (batch_id, stripe, status)
);

CREATE FUNCTION count_ledger_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so that a statement takes its counter rows' locks in one order.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n)
        SELECT batch_id, pg_backend_pid(), status, count(*) FROM new_rows
        GROUP BY batch_id, status ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n)
        SELECT batch_id, pg_backend_pid(), status, -count(*) FROM old_rows
        GROUP BY batch_id, status ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n)
        SELECT batch_id, pg_backend_pid(), status, sum(d) FROM (
            SELECT batch_id, status, 1 AS d FROM new_rows
            UNION ALL SELECT batch_id, status, -1 FROM old_rows) AS moved
        GROUP BY batch_id, status HAVING sum(d) <> 0 ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;

-- Creating the triggers locks the ledger against writes until this migration commits, so
-- the counts below start from a ledger no one is changing.
CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_ledger_changes();
CREATE TRIGGER messages_counted_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_ledger_changes();
CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_ledger_changes();

-- Stripe 0 (no backend's pid) holds the ledgers written before this migration.
INSERT INTO batch_status_counts (batch_id, stripe, status, n)
SELECT batch_id, 0, status, count(*) FROM messages GROUP BY batch_id, status;
