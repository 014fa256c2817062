-- Status webhooks: one signing secret per account (the previous one stays valid for a while
-- after a rotation), delivery retries with a schedule, and `410 Gone` turning a batch's
-- webhook off.

-- Kept in clear: an HMAC is computed with the secret itself, so a hash would not do.
ALTER TABLE accounts
    ADD COLUMN webhook_secret text,
    ADD COLUMN webhook_secret_created_at timestamptz,
    ADD COLUMN webhook_previous_secret text,
    ADD COLUMN webhook_previous_until timestamptz;

-- An event is settled once delivered, given up on, or with nowhere to go.
ALTER TABLE batch_events
    ADD COLUMN settled_at timestamptz,
    ADD COLUMN next_attempt_at timestamptz;
UPDATE batch_events SET settled_at = coalesce(delivered_at, created_at) WHERE attempts > 0;

ALTER TABLE batches ADD COLUMN webhook_disabled_at timestamptz;

ALTER TABLE webhook_deliveries
    ADD COLUMN attempt int NOT NULL DEFAULT 1,
    ADD COLUMN next_retry_at timestamptz;
