-- Per-sender rate limits: messages per second (NULL: no limit of Herald's own), and the
-- sender's pacing timeline, shared by every worker and batch that sends from it.
ALTER TABLE sender_numbers ADD COLUMN mps double precision CHECK (mps > 0);
ALTER TABLE sender_numbers ADD COLUMN paced_until timestamptz NOT NULL DEFAULT now();
