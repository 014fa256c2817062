-- A mailing list's id is to be unique within its account, not across accounts (issue 22's
-- tenancy): a list may keep the id it has elsewhere (a Mobivate list's), and another
-- account's list of that id should neither refuse it nor tell the caller that the id is in
-- use. Step 1 of 2 (docs/DEPLOY.md, Upgrading: the release still running must work on the
-- new schema): the keys by account, beside the keys by id, which the code now names in its
-- ON CONFLICT clauses. Step 2, a release later, drops the keys by id, and with them the
-- refusal of an id another account has.
CREATE UNIQUE INDEX mailing_lists_by_account_and_id ON mailing_lists (account_id, id);
CREATE UNIQUE INDEX mailing_list_contacts_by_account
    ON mailing_list_contacts (account_id, list_id, phone_number);
