-- The PAYG balance has one owner: quota (quota.ledger, in memory for admission). billing's history
-- asks quota for it (quota.status) instead of keeping a second ledger that had to agree.
DROP TABLE billing.ledger;
