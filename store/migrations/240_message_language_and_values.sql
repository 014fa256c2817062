-- A ledger row's language and the values its template was filled with (issue 18): a Postman
-- upload's rows keep them, for its "Retrieve batch messages" (`language`, `values` of the
-- message object) and for a reply's conversation (`request_data`). NULL for every other row:
-- Herald's own batches keep the rendered message only. No default, so adding them rewrites
-- nothing.
ALTER TABLE messages ADD COLUMN language text, ADD COLUMN request_data jsonb;
