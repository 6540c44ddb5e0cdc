-- Studio Chat: the owner's conversations and their messages. A conversation keeps the billing
-- mode and model of its latest message (each message may change them). What a call cost is not
-- kept here: it is in the usage events, which name the conversation (quota.usage.conversation_id).
CREATE TABLE console.conversations (
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES console.owners (account_id),
    title text NOT NULL,
    billing_mode text NOT NULL CHECK (billing_mode IN ('subscription', 'payg')),
    model text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX conversations_account ON console.conversations (account_id, updated_at);

CREATE TABLE console.chat_messages (
    id bigserial PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES console.conversations (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('user', 'assistant', 'refusal')),
    content text NOT NULL,
    model text NOT NULL,
    billing_mode text NOT NULL,
    request_id text,  -- the gateway's x-flowplan-request-id of the call that answered
    created_at timestamptz NOT NULL
);
CREATE INDEX chat_messages_conversation ON console.chat_messages (conversation_id, id);
