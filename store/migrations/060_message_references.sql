-- A caller's own reference for a recipient (the Mobivate dialect's `reference`), by the
-- recipient's row in the batch's file. Kept apart from `messages`: it is known when the
-- batch is accepted, before validation writes the ledger, and a message read joins it on
-- (batch_id, row_number).
CREATE TABLE message_references (
    batch_id    uuid NOT NULL REFERENCES batches(id),
    row_number  bigint NOT NULL,
    account_id  uuid NOT NULL,
    reference   text NOT NULL,
    PRIMARY KEY (batch_id, row_number)
);
