-- A batch's send window (issue 16): a ledger row left `pending` outside its recipient's
-- window keeps the time the window opens, so the batch can say how many rows wait for it.
ALTER TABLE messages ADD COLUMN window_opens_at timestamptz;
