-- A reply from a batch recipient opens a conversation that carries the batch's fields
-- (issue 16): the conversation names its batch, and the batch message a reply answers is
-- found by the recipient's number among the messages the carrier accepted.
ALTER TABLE conversations ADD COLUMN batch_id uuid;
CREATE INDEX messages_sent_to ON messages (to_number) WHERE carrier_sid IS NOT NULL;
