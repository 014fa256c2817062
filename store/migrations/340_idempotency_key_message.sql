-- The message a single send with an idempotency key recorded, written in the transaction that
-- queues it (api/services/send.py): a repeat that finds the key held without a reply past the
-- wait (the first request stopped between its commit and its reply) signals that message if
-- it was never signalled, and answers with its reply. NULL while the first request has not
-- recorded its message, and for keys of the release before (it neither writes nor clears it:
-- a repeat then trusts only a message created since the key's claim).
-- Nullable with no default: adding it rewrites no row.
ALTER TABLE idempotency_keys ADD COLUMN message_id uuid;
