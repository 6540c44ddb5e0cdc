-- A call made from Studio Chat names its conversation (UsageRecorded.conversation_id): the
-- per-call detail shows it, and the console sums a conversation's cost by it.
ALTER TABLE quota.usage ADD COLUMN conversation_id text;
CREATE INDEX usage_account_conversation ON quota.usage (account_id, conversation_id)
    WHERE conversation_id IS NOT NULL;
