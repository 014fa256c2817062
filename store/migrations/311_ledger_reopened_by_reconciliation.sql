-- Rows reconciliation found the carrier never got and put back to `pending`
-- (messages.settle_uncertain). Reconciliation reads them from here on every attempt, and
-- tells the batch to send them: an attempt that failed, or whose result was lost, after it
-- had reopened them left them `pending`, and its retry, finding no `uncertain` row, told the
-- batch to send nothing, so they stayed `pending` for good (the batch ended all the same).
-- Nullable with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN reconciled_unsent boolean;
