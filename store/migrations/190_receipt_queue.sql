-- Receipts at full rate (issue 21): a final status callback is answered once it is appended
-- here; a loop in each API process applies the queue in batches (store/receipts.py). Until a
-- queued receipt is applied it still counts as received: a send whose outcome is written
-- meanwhile applies it from here (messages.apply_kept_receipts).
CREATE TABLE receipt_queue (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    carrier_sid  text NOT NULL,
    status       text NOT NULL CHECK (status IN ('delivered', 'undelivered', 'failed')),
    error_code   text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX receipt_queue_sid ON receipt_queue (carrier_sid);
