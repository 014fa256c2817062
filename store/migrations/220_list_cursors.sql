-- Keyset pagination of Herald's list endpoints (api/pagination.py): each list read in the
-- order of an index, the cursor's key a range condition on it, no OFFSET scans.
-- Batches and conversations: newest first by (created_at, id), both descending.
DROP INDEX batches_account;
CREATE INDEX batches_account ON batches (account_id, created_at DESC, id DESC);
DROP INDEX conversations_account;
CREATE INDEX conversations_account ON conversations (account_id, created_at DESC, id DESC);
-- Senders: oldest first by (created_at, number).
CREATE INDEX sender_numbers_by_account ON sender_numbers (account_id, created_at, number);
-- A batch's webhook deliveries: in the order they were attempted.
CREATE INDEX webhook_deliveries_by_id ON webhook_deliveries (batch_id, id);
