-- A sender belongs to one account at a time (issue 22): inbound replies, STOP/START and the
-- rate limit of a number follow its one owner.
--
-- Before this, several accounts could register one number. The earliest registration keeps
-- it (ties by account id, as inbound routing broke them); the later ones are removed from
-- sender_numbers and kept in sender_numbers_displaced, so an operator can tell each account
-- that lost a number and settle who owns it. Their batches already running keep sending,
-- paced by the owner's limit; their next batch or send from it is AGENT_NUMBER_NOT_FOUND.
CREATE TABLE sender_numbers_displaced (
    account_id    uuid NOT NULL,
    number        text NOT NULL,
    channel       text NOT NULL,
    mps           double precision,
    webhook       text,
    created_at    timestamptz NOT NULL,
    displaced_at  timestamptz NOT NULL DEFAULT now()
);

WITH ranked AS (
    SELECT account_id, number,
        row_number() OVER (PARTITION BY number ORDER BY created_at, account_id) AS rank
    FROM sender_numbers
), displaced AS (
    DELETE FROM sender_numbers AS s USING ranked AS r
    WHERE s.account_id = r.account_id AND s.number = r.number AND r.rank > 1
    RETURNING s.account_id, s.number, s.channel, s.mps, s.webhook, s.created_at
)
INSERT INTO sender_numbers_displaced (account_id, number, channel, mps, webhook, created_at)
SELECT account_id, number, channel, mps, webhook, created_at FROM displaced;

-- Also the index inbound routing and pacing find a number's owner by.
DROP INDEX sender_numbers_number;
CREATE UNIQUE INDEX sender_numbers_owner ON sender_numbers (number);
