-- A recipient's own content template (issue 16): the `content_sid` and `content_variables`
-- cells of its row in the batch's file, which the send of that row uses instead of the
-- batch's. Written at validation, only for files with those columns; keyed as
-- message_references is, by (batch_id, row_number).
CREATE TABLE message_contents (
    batch_id           uuid NOT NULL REFERENCES batches(id),
    row_number         bigint NOT NULL,
    content_sid        text,
    content_variables  text,
    PRIMARY KEY (batch_id, row_number)
);
