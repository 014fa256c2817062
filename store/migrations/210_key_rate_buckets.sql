-- The per-key request rate (issue 21) is a token bucket on the key's row, as a campaign's is,
-- so every API process spends from the same one: tokens left at `rate_updated` (NULL: a
-- full bucket).
ALTER TABLE api_keys ADD COLUMN rate_tokens double precision;
ALTER TABLE api_keys ADD COLUMN rate_updated timestamptz;
