-- Mailing lists (issue 17): an account's named lists of contacts, each a number in E.164 and
-- its fields (the template tags of a batch that names the list). A batch expands a list when
-- it is validated, so its contacts are read by the worker, never by the API process.
CREATE TABLE mailing_lists (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts(id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailing_lists_by_account ON mailing_lists (account_id, created_at, id);

CREATE TABLE mailing_list_contacts (
    list_id       uuid NOT NULL REFERENCES mailing_lists(id) ON DELETE CASCADE,
    phone_number  text NOT NULL,
    account_id    uuid NOT NULL,
    fields        jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, phone_number)
);

-- A row's own sender, when it is not the batch's (a Mobivate recipient's `originator`, an
-- inline row's `agent_number`); NULL: the batch's `agent_number`.
ALTER TABLE messages ADD COLUMN from_number text;
