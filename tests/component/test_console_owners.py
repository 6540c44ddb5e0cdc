"""The console's owner tables on a real Postgres (services/console/owners.py): the per-address
side of the wrong-password lockout, and email confirmation links (once, unexpired, only for the
email they were sent to, a new one at most once a minute)."""

from datetime import timedelta

import asyncpg

from libs.clock import ManualClock
from services.console import auth
from services.console.owners import Owners


async def owner(owners: Owners, clock: ManualClock, email: str | None = None) -> str:
    account_id = f"acc_{auth.new_secret()[:12]}"
    secret, _, _ = await owners.issue_link(account_id, None, clock.now())
    assert await owners.use_link(secret, email, "hash", clock.now()) == account_id
    return account_id


async def test_wrong_passwords_from_one_address_lock_it_whatever_the_emails(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    owners, rule = Owners(pool), auth.Lockout()
    since = clock.now() - rule.window
    for i in range(rule.per_address):  # a different email each time: no email reaches its own limit
        await owners.record_failure(f"guess-{i}@example.com", "198.51.100.9", clock.now())
    email_failures = await owners.failures("email", "guess-0@example.com", since)
    address_failures = await owners.failures("address", "198.51.100.9", since)
    assert (email_failures, address_failures) == (1, rule.per_address)
    assert rule.locked(email_failures, address_failures)
    assert not rule.locked(0, await owners.failures("address", "198.51.100.10", since))
    await owners.forget_failures("guess-0@example.com", since)  # a right password clears its email only
    assert await owners.failures("address", "198.51.100.9", since) == rule.per_address
    clock.advance(rule.window + timedelta(seconds=1))  # the window passed: unlocked
    assert await owners.failures("address", "198.51.100.9", clock.now() - rule.window) == 0


async def test_a_confirmation_link_confirms_its_email_once_and_only_while_it_is_the_owners(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    owners = Owners(pool)
    account_id = await owner(owners, clock, "typed@example.com")  # typed at the set-password page
    assert await owners.unconfirmed_email(account_id) == "typed@example.com"
    token = await owners.new_confirmation(account_id, "typed@example.com", clock.now(), clock.now())
    assert token is not None
    recent = clock.now() - timedelta(minutes=1)
    assert await owners.new_confirmation(account_id, "typed@example.com", clock.now(), recent) is None
    assert await owners.confirmation(token, clock.now()) == "typed@example.com"  # looking uses nothing
    assert await owners.confirmation("not-a-token", clock.now()) is None
    assert await owners.use_confirmation(token, clock.now()) == account_id
    assert await owners.unconfirmed_email(account_id) is None and await owners.email_confirmed(account_id)
    assert await owners.use_confirmation(token, clock.now()) is None  # once

    late = await owner(owners, clock, "late@example.com")
    stale = await owners.new_confirmation(late, "late@example.com", clock.now(), clock.now())
    assert stale is not None
    clock.advance(auth.LINK_TTL + timedelta(seconds=1))
    assert await owners.confirmation(stale, clock.now()) is None
    assert await owners.use_confirmation(stale, clock.now()) is None and not await owners.email_confirmed(late)

    moved = await owner(owners, clock, "old@example.com")
    link = await owners.new_confirmation(moved, "old@example.com", clock.now(), clock.now())
    assert link is not None
    await pool.execute("UPDATE console.owners SET email = 'new@example.com' WHERE account_id = $1", moved)
    await owners.use_confirmation(link, clock.now())  # sent to the old address: confirms nothing now
    assert await owners.unconfirmed_email(moved) == "new@example.com"
