-- The Postman dialect's reads and retry (issue 18): a batch started for a campaign names it, so
-- `/campaigns/{campaignId}/batch/{batchId}/...` finds only that campaign's batches. Deleting
-- the campaign leaves its batches, no longer reachable by the dialect's paths.
ALTER TABLE batches ADD COLUMN campaign_id uuid REFERENCES campaigns(id) ON DELETE SET NULL;

-- The addresses a campaign's dialect requests may come from (Postman's static IP allow-list):
-- networks in CIDR form; NULL lets any address through.
ALTER TABLE campaigns ADD COLUMN allowed_ips cidr[];
