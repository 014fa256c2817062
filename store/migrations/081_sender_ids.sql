-- Alphanumeric sender IDs (issue 17) are senders like numbers: in the same table, so the
-- unique index on `number` gives each one owner and `mps` paces it. `kind` tells them apart:
-- a sender ID only sends (it receives no replies, so inbound never finds it).
ALTER TABLE sender_numbers ADD COLUMN kind text NOT NULL DEFAULT 'number'
    CHECK (kind IN ('number', 'sender_id'));

-- Phones show a sender ID as written, so `ACME` and `Acme` would read as one sender: an ID
-- has one owner whatever its case.
CREATE UNIQUE INDEX sender_ids_owner ON sender_numbers (lower(number)) WHERE kind = 'sender_id';
