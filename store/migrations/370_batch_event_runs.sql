-- The workflow run that recorded each event, and the seq it gave it. A reset of a batch's
-- workflow (the Temporal web UI's Reset) starts a run that numbers its events from the reset
-- point, on seqs the old run's events already hold: such an event goes after the batch's
-- last one instead of being dropped as a retry's repeat (its final event was, and `/events`
-- never ended). A repeat is a retry's when the same run gave the same seq. NULL: recorded
-- before this migration, or by the API (a batch never started).
ALTER TABLE batch_events ADD COLUMN run_id text, ADD COLUMN run_seq int;
