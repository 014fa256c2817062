-- Short links of batches sent with `shorten_urls`: one code per message and URL, made by
-- validation as it writes the ledger, and followed by `GET /s/{code}`. The first click's time
-- and user agent are kept, and every click is counted. A message's clicks are read by
-- (batch_id, seq).
CREATE TABLE short_links (
    code                  text PRIMARY KEY,
    batch_id              uuid NOT NULL REFERENCES batches(id),
    seq                   bigint NOT NULL,
    account_id            uuid NOT NULL,
    url                   text NOT NULL,
    clicks                bigint NOT NULL DEFAULT 0,
    first_clicked_at      timestamptz,
    first_user_agent      text,
    last_clicked_at       timestamptz,
    -- The `click` event of the first click, posted to the batch's status webhook.
    webhook_attempts      int NOT NULL DEFAULT 0,
    webhook_delivered_at  timestamptz
);
CREATE INDEX short_links_message ON short_links (batch_id, seq);
