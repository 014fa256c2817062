-- Per-account carrier credentials (issue 22): a Twilio subaccount whose SID and auth token
-- the account's sends use instead of the service's own. The token is a secret: the API never
-- returns it after it is set.
CREATE TABLE carrier_accounts (
    account_id   uuid PRIMARY KEY REFERENCES accounts(id),
    account_sid  text NOT NULL,
    auth_token   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
