-- Step 2 of 2 of migration 300 (docs/DEPLOY.md, Upgrading): a mailing list's id is unique
-- within its account only. The keys by account that step 1 added become the primary keys and
-- the contacts' reference to their list; the keys by id go, and with them the refusal of an
-- id another account has. The release before this one already names the keys by account in
-- its ON CONFLICT clauses, so it works on this schema during a rolling update.
ALTER TABLE mailing_list_contacts DROP CONSTRAINT mailing_list_contacts_list_id_fkey;
ALTER TABLE mailing_list_contacts DROP CONSTRAINT mailing_list_contacts_pkey;
ALTER TABLE mailing_list_contacts
    ADD CONSTRAINT mailing_list_contacts_pkey PRIMARY KEY USING INDEX mailing_list_contacts_by_account;
ALTER TABLE mailing_lists DROP CONSTRAINT mailing_lists_pkey;
ALTER TABLE mailing_lists
    ADD CONSTRAINT mailing_lists_pkey PRIMARY KEY USING INDEX mailing_lists_by_account_and_id;
ALTER TABLE mailing_list_contacts
    ADD CONSTRAINT mailing_list_contacts_list_fkey FOREIGN KEY (account_id, list_id)
    REFERENCES mailing_lists (account_id, id) ON DELETE CASCADE;
