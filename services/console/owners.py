"""The console's tables: owners, one-time sign-in links, sessions and failed sign-ins."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.console import auth

TOUCH_EVERY = timedelta(seconds=60)
"""A session's last_seen_at is written at most this often (not on every page)."""


class EmailTaken(Exception):
    """Another account's owner signs in with this email."""


@dataclass(frozen=True)
class Owner:
    account_id: str
    email: str | None
    password_hash: str | None


class Owners:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def issue_link(self, account_id: str, email: str | None, now: datetime) -> tuple[str, datetime, str | None]:
        """A fresh one-time link for the account's owner (created on first use); earlier links stay
        valid until used or expired. Returns (the link's secret, when it expires, the owner's email)."""
        secret = auth.new_secret()
        expires_at = now + auth.LINK_TTL
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO console.owners (account_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                account_id, now,
            )  # fmt: skip
            if email is not None:
                try:
                    await conn.execute("UPDATE console.owners SET email = $2 WHERE account_id = $1", account_id, email)
                except asyncpg.UniqueViolationError as exc:
                    raise EmailTaken(email) from exc
            await conn.execute(
                """INSERT INTO console.sign_in_links (link_hash, account_id, created_at, expires_at)
                   VALUES ($1, $2, $3, $4)""",
                auth.digest(secret), account_id, now, expires_at,
            )  # fmt: skip
            known = await conn.fetchval("SELECT email FROM console.owners WHERE account_id = $1", account_id)
        return secret, expires_at, known

    async def link_owner(self, secret: str, now: datetime) -> Owner | None:
        """The owner a link is for while it is unused and unexpired (looking does not use it)."""
        row = await self.pool.fetchrow(
            """SELECT o.account_id, o.email, o.password_hash FROM console.sign_in_links l
               JOIN console.owners o USING (account_id)
               WHERE l.link_hash = $1 AND l.used_at IS NULL AND l.expires_at > $2""",
            auth.digest(secret), now,
        )  # fmt: skip
        return Owner(row["account_id"], row["email"], row["password_hash"]) if row else None

    async def use_link(self, secret: str, email: str | None, password_hash: str, now: datetime) -> str | None:
        """Use the link (once: concurrent uses race in the database and one wins) to set the owner's
        password, and the email when the owner has none yet. Returns the account, or None."""
        async with self.pool.acquire() as conn, conn.transaction():
            account_id: str | None = await conn.fetchval(
                """UPDATE console.sign_in_links SET used_at = $2
                   WHERE link_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING account_id""",
                auth.digest(secret), now,
            )  # fmt: skip
            if account_id is None:
                return None
            try:
                await conn.execute(
                    """UPDATE console.owners SET password_hash = $2, password_set_at = $3,
                       email = COALESCE(email, $4),
                       -- the link reached the owner: the email it was issued for is theirs
                       email_confirmed_at = CASE WHEN email IS NOT NULL THEN COALESCE(email_confirmed_at, $3) END
                       WHERE account_id = $1""",
                    account_id, password_hash, now, email,
                )  # fmt: skip
            except asyncpg.UniqueViolationError as exc:
                raise EmailTaken(email or "") from exc
        return account_id

    async def by_email(self, email: str) -> Owner | None:
        row = await self.pool.fetchrow(
            "SELECT account_id, email, password_hash FROM console.owners WHERE email = $1", email
        )
        return Owner(row["account_id"], row["email"], row["password_hash"]) if row else None

    async def failures(self, scope: str, subject: str, since: datetime) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM console.sign_in_failures WHERE scope = $1 AND subject = $2 AND failed_at > $3",
            scope, subject, since,
        )  # fmt: skip
        return count

    async def record_failure(self, email: str, address: str, now: datetime) -> None:
        await self.pool.executemany(
            "INSERT INTO console.sign_in_failures (scope, subject, failed_at) VALUES ($1, $2, $3)",
            [("email", email, now), ("address", address, now)],
        )

    async def forget_failures(self, email: str, before: datetime) -> None:
        """A right password clears the email's count (the address's stays); old rows go too."""
        await self.pool.execute(
            "DELETE FROM console.sign_in_failures WHERE (scope = 'email' AND subject = $1) OR failed_at < $2",
            email, before,
        )  # fmt: skip

    async def start_session(self, account_id: str, now: datetime) -> str:
        session_id = auth.new_secret()
        await self.pool.execute(
            "INSERT INTO console.sessions (session_hash, account_id, created_at, last_seen_at) VALUES ($1, $2, $3, $3)",
            auth.digest(session_id), account_id, now,
        )  # fmt: skip
        return session_id

    async def session_account(self, session_id: str, now: datetime) -> str | None:
        """The account of a live session (not signed out, not idle too long, not too old), or None."""
        session_hash = auth.digest(session_id)
        row = await self.pool.fetchrow(
            "SELECT account_id, created_at, last_seen_at, ended_at FROM console.sessions WHERE session_hash = $1",
            session_hash,
        )
        if row is None or not auth.session_alive(row["created_at"], row["last_seen_at"], row["ended_at"], now):
            return None
        if now - row["last_seen_at"] >= TOUCH_EVERY:
            await self.pool.execute(
                "UPDATE console.sessions SET last_seen_at = $2 WHERE session_hash = $1", session_hash, now
            )
        account_id: str = row["account_id"]
        return account_id

    async def end_session(self, session_id: str, now: datetime) -> None:
        await self.pool.execute(
            "UPDATE console.sessions SET ended_at = $2 WHERE session_hash = $1 AND ended_at IS NULL",
            auth.digest(session_id), now,
        )  # fmt: skip

    # -- sign-up ----------------------------------------------------------------------------

    async def sign_ups(self, address: str, since: datetime) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM console.sign_ups WHERE address = $1 AND signed_up_at > $2", address, since
        )
        return count

    async def record_sign_up(self, address: str, now: datetime) -> None:
        await self.pool.execute("INSERT INTO console.sign_ups (address, signed_up_at) VALUES ($1, $2)", address, now)

    async def email_taken(self, email: str) -> bool:
        taken = await self.pool.fetchval("SELECT true FROM console.owners WHERE email = $1", email)
        return bool(taken)

    async def new_pending_sign_up(self, email: str, password_hash: str, now: datetime) -> str:
        token = auth.new_secret()
        await self.pool.execute(
            """INSERT INTO console.pending_sign_ups (token_hash, email, password_hash, expires_at)
               VALUES ($1, $2, $3, $4)""",
            auth.digest(token), email, password_hash, now + auth.LINK_TTL,
        )  # fmt: skip
        return token

    async def _link_email(self, table: str, token: str, now: datetime) -> str | None:
        """The email a one-time link of `table` is for while it is unused and unexpired (looking
        does not use it)."""
        email: str | None = await self.pool.fetchval(
            f"SELECT email FROM console.{table} WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
            auth.digest(token), now,
        )  # fmt: skip
        return email

    async def pending_sign_up(self, token: str, now: datetime) -> str | None:
        """The email a sign-up link is for while it is unused and unexpired."""
        return await self._link_email("pending_sign_ups", token, now)

    async def use_pending_sign_up(self, token: str, now: datetime) -> tuple[str, str] | None:
        """Use a sign-up link (once, unexpired): (email, password hash)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT email, password_hash FROM console.pending_sign_ups
                   WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 FOR UPDATE""",
                auth.digest(token), now,
            )  # fmt: skip
            if row is None:
                return None
            await conn.execute(  # the hash is not kept past its use
                "UPDATE console.pending_sign_ups SET used_at = $2, password_hash = '' WHERE token_hash = $1",
                auth.digest(token), now,
            )  # fmt: skip
        return row["email"], row["password_hash"]

    async def email_confirmed_now(self, account_id: str, now: datetime) -> None:
        await self.pool.execute(
            "UPDATE console.owners SET email_confirmed_at = $2 WHERE account_id = $1", account_id, now
        )

    async def set_password(self, account_id: str, password_hash: str, now: datetime) -> None:
        await self.pool.execute(
            "UPDATE console.owners SET password_hash = $2, password_set_at = $3 WHERE account_id = $1",
            account_id, password_hash, now,
        )  # fmt: skip

    async def email_confirmed(self, account_id: str) -> bool:
        confirmed = await self.pool.fetchval(
            "SELECT email_confirmed_at IS NOT NULL FROM console.owners WHERE account_id = $1", account_id
        )
        return bool(confirmed)

    async def new_confirmation(self, account_id: str, email: str, now: datetime, unless_since: datetime) -> str | None:
        """A one-time link's secret confirming `email` for the account (valid LINK_TTL); None when
        one was issued since `unless_since`."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM console.owners WHERE account_id = $1 FOR UPDATE", account_id)
            recent = await conn.fetchval(
                """SELECT true FROM console.email_confirmations
                   WHERE account_id = $1 AND expires_at - $3::interval > $2""",
                account_id, unless_since, auth.LINK_TTL,
            )  # fmt: skip
            if recent:
                return None
            token = auth.new_secret()
            await conn.execute(
                """INSERT INTO console.email_confirmations (token_hash, account_id, email, expires_at)
                   VALUES ($1, $2, $3, $4)""",
                auth.digest(token), account_id, email, now + auth.LINK_TTL,
            )  # fmt: skip
        return token

    async def confirmation(self, token: str, now: datetime) -> str | None:
        """The email a confirmation link is for while it is unused and unexpired."""
        return await self._link_email("email_confirmations", token, now)

    async def use_confirmation(self, token: str, now: datetime) -> str | None:
        """Use a confirmation link (once, unexpired) for the email it was sent to, if the owner still
        has that email. Returns the account, or None."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE console.email_confirmations SET used_at = $2
                   WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING account_id, email""",
                auth.digest(token), now,
            )  # fmt: skip
            if row is None:
                return None
            await conn.execute(
                """UPDATE console.owners SET email_confirmed_at = COALESCE(email_confirmed_at, $3)
                   WHERE account_id = $1 AND email = $2""",
                row["account_id"], row["email"], now,
            )  # fmt: skip
        account_id: str = row["account_id"]
        return account_id

    async def unconfirmed_email(self, account_id: str) -> str | None:
        """The owner's email while it is not confirmed."""
        email: str | None = await self.pool.fetchval(
            "SELECT email FROM console.owners WHERE account_id = $1 AND email_confirmed_at IS NULL", account_id
        )
        return email
