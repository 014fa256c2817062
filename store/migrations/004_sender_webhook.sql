-- A sender number's own webhook: conversation events go there when a send names none.
ALTER TABLE sender_numbers ADD COLUMN webhook text;
