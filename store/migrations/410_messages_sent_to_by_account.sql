-- migration: no transaction
-- A reply's last batch message to its user (messages.last_sent_to, each inbound message): the
-- index by number alone read every sent row to the number, every account's since the first,
-- then sorted them by time. By number, then account, newest first, the read stops at the
-- first row of the reply's sender. Its predicate keeps `to_number IS NOT NULL`, as 250's did:
-- a lookup by number implies it, a lookup by sid does not, so the planner never takes this
-- index for a sid's (with statistics older than the sends, it read every sent row so).
-- Built CONCURRENTLY, the ledger written meanwhile; a build that was interrupted leaves an
-- invalid index, dropped first when the migration runs again.
DROP INDEX CONCURRENTLY IF EXISTS messages_sent_to_account;
CREATE INDEX CONCURRENTLY messages_sent_to_account
    ON messages (to_number, account_id, sent_at DESC NULLS LAST) INCLUDE (from_number)
    WHERE carrier_sid IS NOT NULL AND to_number IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS messages_sent_to;
