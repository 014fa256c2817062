-- A batch's rows waiting for their send window (`pending`, `window_opens_at` set) are counted
-- as the ledger changes, beside its counts by status (migration 211), so that `GET
-- /v1/sms/batch/{id}` and each status event of a batch with a `send_window` read a few
-- counter rows instead of the batch's rows (issue 21: the same cost at 1,000,000 rows as at
-- 100). `windowed` is the share of a (batch, stripe, status) row's `n` that waits; only
-- `pending` rows do. A statement that moves a row into or out of the wait without changing
-- its status (`pending` -> `pending` with its window's opening) moves `windowed` alone.

-- No ledger writes between the count below and the new function taking over at commit: the
-- count reads the whole ledger once, and the ledger's writers wait for it, as do the readers
-- of the counts (the new column's lock). The ledger is locked first, as its writers lock it
-- before their trigger writes the counts: the other order deadlocks with a writer.
LOCK TABLE messages IN SHARE MODE;

ALTER TABLE batch_status_counts ADD COLUMN windowed bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION count_ledger_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted, so that a statement takes its counter rows' locks in one order.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n, windowed)
        SELECT batch_id, pg_backend_pid(), status, count(*),
            count(*) FILTER (WHERE status = 'pending' AND window_opens_at IS NOT NULL)
        FROM new_rows
        GROUP BY batch_id, status ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status)
        DO UPDATE SET n = c.n + excluded.n, windowed = c.windowed + excluded.windowed;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n, windowed)
        SELECT batch_id, pg_backend_pid(), status, -count(*),
            -count(*) FILTER (WHERE status = 'pending' AND window_opens_at IS NOT NULL)
        FROM old_rows
        GROUP BY batch_id, status ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status)
        DO UPDATE SET n = c.n + excluded.n, windowed = c.windowed + excluded.windowed;
    ELSE
        INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n, windowed)
        SELECT batch_id, pg_backend_pid(), status, sum(d),
            coalesce(sum(d) FILTER (WHERE waits), 0)
        FROM (
            SELECT batch_id, status, 1 AS d,
                status = 'pending' AND window_opens_at IS NOT NULL AS waits
            FROM new_rows
            UNION ALL SELECT batch_id, status, -1,
                status = 'pending' AND window_opens_at IS NOT NULL
            FROM old_rows) AS moved
        GROUP BY batch_id, status
        HAVING sum(d) <> 0 OR coalesce(sum(d) FILTER (WHERE waits), 0) <> 0
        ORDER BY batch_id, status
        ON CONFLICT (batch_id, stripe, status)
        DO UPDATE SET n = c.n + excluded.n,
            windowed = c.windowed + excluded.windowed;
    END IF;
    RETURN NULL;
END $$;

-- Stripe 0 holds the rows waiting before this migration (their `n` is counted already).
INSERT INTO batch_status_counts AS c (batch_id, stripe, status, n, windowed)
SELECT batch_id, 0, 'pending', 0, count(*) FROM messages
WHERE status = 'pending' AND window_opens_at IS NOT NULL
GROUP BY batch_id
ON CONFLICT (batch_id, stripe, status) DO UPDATE SET windowed = c.windowed + excluded.windowed;
