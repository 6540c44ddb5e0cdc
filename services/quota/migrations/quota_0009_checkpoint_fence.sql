-- The fencing token of the writer of each (projection, partition): the revision of the lease it
-- projects under (libs/eventlog/checkpoints.py). A new owner stamps its own, higher, before
-- it projects; a commit goes through only while the row holds no newer one, so a writer frozen
-- past its lease cannot commit a batch after the new owner took over. 0: never fenced.
ALTER TABLE quota.checkpoints ADD COLUMN fence bigint NOT NULL DEFAULT 0;
