-- The messages the API recorded and never handed to their workflow (signalled_at NULL: its
-- process died between the commit and the signal, or the signal failed), found by the API's
-- sweep each minute (api/services/stranded_messages.py): a user's message (and its HELP
-- answer, signalled with it) and an agent message still `queued`. The workflow's own
-- messages (a silence timer's, never signalled) are neither once sent.
CREATE INDEX conversation_messages_unsignalled ON conversation_messages (created_at)
    WHERE signalled_at IS NULL AND (sender = 'USER' OR (kind = 'message' AND status = 'queued'));
