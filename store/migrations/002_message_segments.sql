-- Recipient files (issue 4): each message's encoding and segment count, and their totals
-- per batch over the messages to be sent. Rows written before this migration stay NULL.

ALTER TABLE messages
    ADD COLUMN encoding text CHECK (encoding IN ('gsm7', 'ucs2')),
    ADD COLUMN segments int CHECK (segments > 0);

ALTER TABLE batches
    ADD COLUMN segments_total bigint,
    ADD COLUMN messages_gsm7 bigint,
    ADD COLUMN messages_ucs2 bigint;
