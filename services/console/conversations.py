"""Studio Chat's tables: an owner's conversations and their messages (console_0004_chat.sql).

Every read and change names the account as well as the conversation, so that one owner never
reaches another's conversation (the pages answer 404, as for a conversation that does not exist).
"""

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from libs.chatpass import ChatBillingMode

DEFAULT_TITLE = "New chat"
TITLE_MAX = 120


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    billing_mode: ChatBillingMode
    model: str
    updated_at: datetime


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    model: str
    billing_mode: str
    created_at: datetime


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(row["id"], row["title"], row["billing_mode"], row["model"], row["updated_at"])


class Conversations:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, account_id: str, billing_mode: ChatBillingMode, model: str, now: datetime) -> str:
        conversation_id = f"conv_{secrets.token_hex(12)}"
        await self.pool.execute(
            """INSERT INTO console.conversations (id, account_id, title, billing_mode, model, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $6)""",
            conversation_id, account_id, DEFAULT_TITLE, billing_mode, model, now,
        )  # fmt: skip
        return conversation_id

    async def of_account(self, account_id: str) -> list[Conversation]:
        rows = await self.pool.fetch(
            """SELECT id, title, billing_mode, model, updated_at FROM console.conversations
               WHERE account_id = $1 ORDER BY updated_at DESC, id""",
            account_id,
        )
        return [_conversation(row) for row in rows]

    async def titles(self, account_id: str) -> dict[str, str]:
        return {c.id: c.title for c in await self.of_account(account_id)}

    async def get(self, account_id: str, conversation_id: str) -> Conversation | None:
        row = await self.pool.fetchrow(
            """SELECT id, title, billing_mode, model, updated_at FROM console.conversations
               WHERE id = $1 AND account_id = $2""",
            conversation_id, account_id,
        )  # fmt: skip
        return _conversation(row) if row else None

    async def messages(self, conversation_id: str) -> list[Message]:
        rows = await self.pool.fetch(
            """SELECT role, content, model, billing_mode, created_at FROM console.chat_messages
               WHERE conversation_id = $1 ORDER BY id""",
            conversation_id,
        )
        return [Message(r["role"], r["content"], r["model"], r["billing_mode"], r["created_at"]) for r in rows]

    async def rename(self, account_id: str, conversation_id: str, title: str) -> bool:
        done = await self.pool.execute(
            "UPDATE console.conversations SET title = $3 WHERE id = $1 AND account_id = $2",
            conversation_id, account_id, title,
        )  # fmt: skip
        return bool(done.endswith(" 1"))

    async def delete(self, account_id: str, conversation_id: str) -> bool:
        done = await self.pool.execute(
            "DELETE FROM console.conversations WHERE id = $1 AND account_id = $2", conversation_id, account_id
        )
        return bool(done.endswith(" 1"))

    async def asked(
        self, conversation: Conversation, text: str, billing_mode: ChatBillingMode, model: str, now: datetime
    ) -> None:
        """The owner's message, with the mode and model it is sent with (the conversation keeps them;
        a conversation still untitled takes the start of its first message as its title)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE console.conversations SET billing_mode = $2, model = $3, updated_at = $4,
                       title = CASE WHEN title = $5 AND NOT EXISTS
                           (SELECT 1 FROM console.chat_messages WHERE conversation_id = $1) THEN $6 ELSE title END
                   WHERE id = $1""",
                conversation.id, billing_mode, model, now, DEFAULT_TITLE, _title_of(text),
            )  # fmt: skip
            await self._add(conn, conversation.id, "user", text, model, billing_mode, None, now)

    async def answered(
        self, conversation_id: str, role: str, text: str, model: str, billing_mode: str, request_id: str | None,
        now: datetime,
    ) -> None:  # fmt: skip
        """The reply (role assistant) or the gateway's refusal (role refusal)."""
        async with self.pool.acquire() as conn:
            await self._add(conn, conversation_id, role, text, model, billing_mode, request_id, now)

    @staticmethod
    async def _add(
        conn: asyncpg.Connection, conversation_id: str, role: str, text: str, model: str, billing_mode: str,
        request_id: str | None, now: datetime,
    ) -> None:  # fmt: skip
        await conn.execute(
            """INSERT INTO console.chat_messages
                   (conversation_id, role, content, model, billing_mode, request_id, created_at)
               SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM console.conversations WHERE id = $1)""",
            conversation_id, role, text, model, billing_mode, request_id, now,
        )  # fmt: skip


def _title_of(text: str) -> str:
    first = " ".join(text.split())
    return first if len(first) <= 60 else first[:59] + "…"
