-- Herald's first schema: tenancy, files, batches, the message ledger, webhooks.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts(id),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_prefix ON api_keys (prefix);

CREATE TABLE sender_numbers (
    account_id  uuid NOT NULL REFERENCES accounts(id),
    number      text NOT NULL,
    channel     text NOT NULL DEFAULT 'sms',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number)
);

CREATE TABLE files (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts(id),
    filename    text NOT NULL,
    content_type text,
    size_bytes  bigint NOT NULL,
    content     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_account ON files (account_id, created_at);

CREATE TABLE batches (
    id            uuid PRIMARY KEY REFERENCES files(id),
    account_id    uuid NOT NULL REFERENCES accounts(id),
    workflow_id   text NOT NULL UNIQUE,
    name          text,
    agent_number  text NOT NULL,
    request       jsonb NOT NULL,
    request_hash  text NOT NULL,
    status        text NOT NULL DEFAULT 'queued',
    code          text,
    reason        text,
    rows_total    bigint,
    recipients    bigint,
    rejected      bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX batches_account ON batches (account_id, created_at DESC, id);

-- The ledger: one row per recipient, numbered 0..n-1 within its batch.
CREATE TABLE messages (
    batch_id      uuid NOT NULL REFERENCES batches(id),
    seq           bigint NOT NULL,
    account_id    uuid NOT NULL,
    row_number    bigint NOT NULL,
    to_number     text NOT NULL,
    body          text NOT NULL,
    status        text NOT NULL DEFAULT 'pending',
    carrier_sid   text,
    error_code    text,
    error_message text,
    attempts      int NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, seq)
);
CREATE INDEX messages_carrier_sid ON messages (carrier_sid) WHERE carrier_sid IS NOT NULL;

CREATE TABLE rejected_rows (
    batch_id    uuid NOT NULL REFERENCES batches(id),
    row_number  bigint NOT NULL,
    account_id  uuid NOT NULL,
    code        text NOT NULL,
    reason      text NOT NULL,
    value       text,
    PRIMARY KEY (batch_id, row_number)
);

CREATE TABLE opt_outs (
    account_id  uuid NOT NULL REFERENCES accounts(id),
    number      text NOT NULL,
    source      text NOT NULL DEFAULT 'api',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, number)
);

-- The lifecycle events of a batch, in order, as posted to its status webhook.
CREATE TABLE batch_events (
    batch_id    uuid NOT NULL REFERENCES batches(id),
    seq         int NOT NULL,
    account_id  uuid NOT NULL,
    status      text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    int NOT NULL DEFAULT 0,
    delivered_at timestamptz,
    PRIMARY KEY (batch_id, seq)
);

CREATE TABLE webhook_deliveries (
    id           bigserial PRIMARY KEY,
    batch_id     uuid NOT NULL,
    event_seq    int NOT NULL,
    account_id   uuid NOT NULL,
    url          text NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    status_code  int,
    error        text,
    duration_ms  int NOT NULL
);
CREATE INDEX webhook_deliveries_batch ON webhook_deliveries (batch_id, event_seq);
