-- What an API key may do (issue 17): the permission names in store.accounts.PERMISSIONS.
-- NULL grants every permission, so keys made before this keep working as they did; an empty
-- array grants none.
ALTER TABLE api_keys ADD COLUMN permissions text[];
