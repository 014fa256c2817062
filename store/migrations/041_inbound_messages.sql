-- Inbound is replay-safe (issue 22): each inbound MessageSid whose side effects (STOP, START)
-- were applied, for good. Its conversation message may be forgotten when the conversation
-- could not be signalled, so that the carrier's retry is signalled then; this row is never
-- forgotten, so neither that retry nor a replay changes an opt-out again.
CREATE TABLE inbound_messages (
    carrier_sid  text PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts(id),
    received_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO inbound_messages (carrier_sid, account_id, received_at)
SELECT carrier_sid, account_id, created_at FROM conversation_messages
WHERE sender = 'USER' AND carrier_sid IS NOT NULL
ON CONFLICT (carrier_sid) DO NOTHING;
