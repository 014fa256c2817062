-- Delivery receipts (issue 6): the carrier's status callbacks, and the order in which they
-- may move a message. A receipt can arrive before its send's outcome is recorded (the
-- carrier answers each request at once; a slice records all of them when it ends), so a
-- final receipt is kept here and applied when its carrier_sid reaches the ledger.

-- How far a message has gone by the carrier's word: a receipt moves a message only to a
-- higher rank, so a late `sent` never undoes `delivered`, and the first final one stays.
-- Statuses without a rank (pending, sending, skipped, ...) are never moved by a receipt.
CREATE FUNCTION receipt_rank(status text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE status
        WHEN 'sent' THEN 1
        WHEN 'delivered' THEN 2
        WHEN 'undelivered' THEN 2
        WHEN 'failed' THEN 2
    END
$$;

CREATE TABLE carrier_receipts (
    carrier_sid  text PRIMARY KEY,
    status       text NOT NULL CHECK (status IN ('delivered', 'undelivered', 'failed')),
    error_code   text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
