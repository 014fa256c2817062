-- A sender's rate limit stays within 0.01..10,000 messages per second (settings.SENDER_MPS_MIN
-- and SENDER_MPS_MAX): beyond, reserve_slots's arithmetic overflows PostgreSQL's integers and
-- intervals. Rows stored before the bound are brought into it: NaN and infinity, which the
-- API once accepted, and any rate above the range become the fastest allowed, not "no limit".
UPDATE sender_numbers
SET mps = CASE WHEN mps = 'NaN' OR mps > 10000 THEN 10000 ELSE 0.01 END
WHERE mps IS NOT NULL AND NOT (mps >= 0.01 AND mps <= 10000);
ALTER TABLE sender_numbers
    DROP CONSTRAINT sender_numbers_mps_check,
    ADD CONSTRAINT sender_numbers_mps_range CHECK (mps >= 0.01 AND mps <= 10000);
