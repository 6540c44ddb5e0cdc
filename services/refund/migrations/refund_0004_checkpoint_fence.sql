-- The fencing token of the writer of each (projection, partition): the revision of the lease it
-- projects under (libs/eventlog/checkpoints.py). A new owner stamps its own, higher, before
-- it projects; a commit goes through only while the row holds no newer one, so a writer frozen
-- past its lease cannot commit a batch after the new owner took over. 0: never fenced.
ALTER TABLE refund.checkpoints ADD COLUMN fence bigint NOT NULL DEFAULT 0;

-- The refund desk's own writes (refund requests, payouts, settlements) are made by the leader
-- outside the projection: fenced the same way by the leader lease's revision (libs/fencing.py).
CREATE TABLE refund.fences (
    holder text PRIMARY KEY,
    fence bigint NOT NULL
);
