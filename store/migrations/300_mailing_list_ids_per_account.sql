-- A mailing list's id is unique within its account, not across accounts (issue 22's
-- tenancy): a list may keep the id it has elsewhere (a Mobivate list's), and another
-- account's list of that id neither refuses it nor tells the caller that the id is in use.
-- Ids were unique across accounts until now, so the new keys hold for every existing row.
ALTER TABLE mailing_list_contacts DROP CONSTRAINT mailing_list_contacts_list_id_fkey;
ALTER TABLE mailing_list_contacts DROP CONSTRAINT mailing_list_contacts_pkey;
ALTER TABLE mailing_lists DROP CONSTRAINT mailing_lists_pkey;

ALTER TABLE mailing_lists ADD PRIMARY KEY (account_id, id);
ALTER TABLE mailing_list_contacts ADD PRIMARY KEY (account_id, list_id, phone_number);
ALTER TABLE mailing_list_contacts ADD FOREIGN KEY (account_id, list_id)
    REFERENCES mailing_lists (account_id, id) ON DELETE CASCADE;
