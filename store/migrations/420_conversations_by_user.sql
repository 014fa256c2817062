-- migration: no transaction
-- A user's conversations of an account (`GET /v1/sms/conversations?user_number=`), newest
-- first: found by the account's index, every conversation of the account was read until the
-- page was full. Built CONCURRENTLY: conversations open while it is built.
DROP INDEX CONCURRENTLY IF EXISTS conversations_account_user;
CREATE INDEX CONCURRENTLY conversations_account_user
    ON conversations (account_id, user_number, created_at DESC, id DESC);
