-- Campaigns (issue 18): an account's named sender and message templates per language, which
-- the Postman dialect's batch send names in its path. `parameters` are the template
-- parameters every template of the campaign uses, in the order they first appear; a CSV for
-- the campaign has exactly these columns after `recipient` and `language`.
CREATE TABLE campaigns (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts(id),
    name        text NOT NULL,
    sender      text NOT NULL,
    templates   jsonb NOT NULL,
    parameters  text[] NOT NULL,
    -- The Postman dialect's request rate per campaign, a token bucket here so that every API
    -- process spends from the same one: tokens left at `rate_updated` (NULL: a full bucket).
    rate_tokens   double precision,
    rate_updated  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX campaigns_by_account ON campaigns (account_id, created_at, id);
