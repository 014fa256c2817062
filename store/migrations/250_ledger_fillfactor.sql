-- The ledger's pages are left half empty by the bulk COPY (issue 23), so that the mark of a
-- row as `sending` (messages.mark_sending), which changes no indexed column, is a HOT update:
-- the new version on the row's own page and no new entry in the primary key. On full pages
-- (the default fillfactor of 100) every mark moved its row to another page with a new key
-- entry; 80 left room for a few rows of a page only. With 50, a 20,000-row batch's marks
-- were HOT but for a few and cost about half the CPU, WAL and buffers of before, and its
-- heap was no larger once sent (the outcome's version, never HOT as it sets `carrier_sid`,
-- then finds room on the page more often). Pages written before this migration keep theirs.
ALTER TABLE messages SET (fillfactor = 50);
