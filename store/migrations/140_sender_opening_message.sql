-- A sender's configured opening message (issue 16): the text a Bland batch sends when its
-- request has no `global.agent_message`.
ALTER TABLE sender_numbers ADD COLUMN opening_message text;
