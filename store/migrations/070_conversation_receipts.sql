-- Delivery receipts for conversation messages (single sends and replies): they are sent
-- with a StatusCallback like batch messages, and a receipt finds its message by the sid.
CREATE INDEX conversation_messages_agent_sid
    ON conversation_messages (carrier_sid) WHERE sender = 'AGENT';
