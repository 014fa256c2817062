-- Single sends: conversations, their messages (both directions), idempotency keys.

-- Inbound messages find their account by the sender number alone.
CREATE INDEX sender_numbers_number ON sender_numbers (number);

CREATE TABLE conversations (
    id              uuid PRIMARY KEY,
    -- Orders conversations of one pair, so a workflow run can tell a newer one from a stale one.
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    account_id      uuid NOT NULL REFERENCES accounts(id),
    workflow_id     text NOT NULL,
    agent_number    text NOT NULL,
    user_number     text NOT NULL,
    channel         text NOT NULL DEFAULT 'sms',
    state           text NOT NULL DEFAULT 'active',
    webhook         text,
    metadata        jsonb,
    request_data    jsonb,
    time_out        double precision,
    timeout_message text,
    warning_time    double precision,
    warning_message text,
    -- Bland fields Herald keeps and echoes but does not act on (persona_id, pathway_id, ...).
    stored_fields   jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    timed_out_at    timestamptz
);
-- One active conversation per pair: concurrent sends and inbound replies meet on this index.
CREATE UNIQUE INDEX conversations_active
    ON conversations (account_id, agent_number, user_number) WHERE state = 'active';
CREATE INDEX conversations_account ON conversations (account_id, created_at DESC, id);
CREATE INDEX conversations_pair ON conversations (agent_number, user_number, seq DESC);

CREATE TABLE conversation_messages (
    id                uuid PRIMARY KEY,
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    conversation_id   uuid NOT NULL REFERENCES conversations(id),
    account_id        uuid NOT NULL,
    sender            text NOT NULL,
    kind              text NOT NULL DEFAULT 'message',
    channel           text NOT NULL DEFAULT 'sms',
    body              text,
    content_sid       text,
    content_variables text,
    status            text NOT NULL,
    carrier_sid       text,
    error_code        text,
    error_message     text,
    attempts          int NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_messages_conversation ON conversation_messages (conversation_id, seq);
-- Twilio may post one inbound message more than once: its MessageSid records it once.
CREATE UNIQUE INDEX conversation_messages_inbound
    ON conversation_messages (carrier_sid) WHERE sender = 'USER';

CREATE TABLE idempotency_keys (
    account_id    uuid NOT NULL REFERENCES accounts(id),
    key           text NOT NULL,
    request_hash  text NOT NULL,
    reply         jsonb,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (account_id, key)
);
