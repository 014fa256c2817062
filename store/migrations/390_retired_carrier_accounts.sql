-- An account's carrier credentials it replaced or removed, kept a while (KEPT_RETIRED_TOKENS
-- in store/carrier_accounts.py): the messages its running slices sent with them still get
-- their receipts, which Twilio signs with the token they were sent with.
CREATE TABLE retired_carrier_accounts (
    account_id   uuid NOT NULL REFERENCES accounts(id),
    account_sid  text NOT NULL,
    auth_token   text NOT NULL,
    retired_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retired_carrier_accounts_sid ON retired_carrier_accounts (account_sid);
