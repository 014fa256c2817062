-- When the API handed a message to its ConversationWorkflow (api/services/inbound.py, send.py):
-- a message recorded whose signal was never sent (the API process died between the commit and
-- the signal) is signalled by the request's repeat (the carrier's retry of an inbound post, a
-- send's repeat with its idempotency key). NULL for messages not signalled by the API: the
-- workflow's own, those recorded before this column or by the release before during a rolling
-- update (a repeat of one is signalled again: its workflow sends nothing twice).
-- `answer_id`: the agent message that answers a user's message (HELP), signalled with it.
-- Nullable with no default: adding them rewrites no row.
ALTER TABLE conversation_messages ADD COLUMN signalled_at timestamptz;
ALTER TABLE conversation_messages ADD COLUMN answer_id uuid;
