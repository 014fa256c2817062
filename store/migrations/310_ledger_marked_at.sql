-- When the attempt now at a row marked it `sending` (messages.write_outcomes): the carrier's
-- message of that attempt was created after it. Reconciliation looks for an `uncertain` row's
-- message only among those created since (activities/reconciliation.py): a row sent before,
-- its message failed by a receipt and retried (`POST .../retry`), was settled with the sid
-- of its earlier, failed send when the retry's answer was lost. NULL for rows marked before
-- this column: reconciliation then looks from the row's creation, as it did.
-- Nullable with no default: adding it rewrites no row.
ALTER TABLE messages ADD COLUMN marked_at timestamptz;
