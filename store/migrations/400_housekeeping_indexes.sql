-- Housekeeping's hourly prunes (store/housekeeping.py) find what is past its time by an index,
-- not by reading the whole table: kept receipts, up to 30 days of them, and idempotency keys
-- with their stored replies, each table millions of rows on a busy service.
CREATE INDEX carrier_receipts_received_at ON carrier_receipts (received_at);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
