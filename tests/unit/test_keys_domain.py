"""The key lifecycle, pure: issue / rotate / revoke commands, evolve (idempotent under replays)
and the in-memory KeyRegistry that key lookups read (by id and by the current secret's hash)."""

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.apikeys import PREFIXES, hash_secret, kind_of
from libs.refusal import Refusal
from proto.v1 import AccountSuspended, AccountUnsuspended, KeyCreated, KeyRevoked, KeyRotated
from services.keys.domain import (
    MAX_ACTIVE_KEYS,
    Access,
    Key,
    evolve,
    evolve_access,
    issue,
    revoke,
    rotate,
    set_suspended,
)
from services.keys.registry import KeyRegistry

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
ACCOUNT = "acc_alice"
OTHER = "acc_bob"
KINDS = ["subscription", "payg", "management"]


def created(account: str = ACCOUNT, kind: str = "subscription", at: datetime = T0) -> tuple[KeyCreated, str, Key]:
    event, secret = issue(account, "laptop", kind, at)
    key = evolve(None, event)
    assert key is not None
    return event, secret, key


# --- issue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_issue_stores_only_the_hash_of_a_well_formed_secret(kind):
    event, secret = issue(ACCOUNT, "ci runner", kind, T0)
    assert kind_of(secret) == kind
    assert event.key_hash == hash_secret(secret)
    assert len(event.key_hash) == 64 and event.key_hash != secret
    assert (event.account_id, event.name, event.kind, event.occurred_at) == (ACCOUNT, "ci runner", kind, T0)
    assert event.prefix == PREFIXES[kind] and secret.startswith(event.prefix)
    assert event.last4 == secret[-4:]
    assert event.key_id.startswith("key_")
    # the secret is nowhere in the event as it goes to the log
    assert secret.encode() not in msgspec.json.encode(event)
    assert secret[len(event.prefix) :].encode() not in msgspec.json.encode(event)
    assert all(secret not in str(value) for value in msgspec.structs.asdict(event).values())


def test_issue_gives_distinct_ids_events_and_secrets():
    issued = [issue(ACCOUNT, "k", "payg", T0) for _ in range(200)]
    assert len({e.key_id for e, _ in issued}) == 200
    assert len({e.event_id for e, _ in issued}) == 200
    assert len({s for _, s in issued}) == 200
    assert len({e.key_hash for e, _ in issued}) == 200


def test_a_created_key_is_the_event():
    event, _, key = created(kind="payg")
    assert key == Key(
        event.key_id, ACCOUNT, "laptop", "payg", "sk-pg-v1-", event.last4, event.key_hash, T0,
        applied=frozenset({event.event_id}),
    )  # fmt: skip
    assert key.view().id == event.key_id and key.view().revoked_at is None


# --- rotate / revoke -----------------------------------------------------------------------


def test_rotate_gives_a_new_secret_and_names_the_old_hash():
    event, _, key = created()
    rotated, secret = rotate(key, ACCOUNT, key.key_id, T0 + H)
    assert isinstance(rotated, KeyRotated)
    assert kind_of(secret) == "subscription"
    assert rotated.key_hash == hash_secret(secret) != key.key_hash
    assert rotated.previous_key_hash == key.key_hash
    assert rotated.last4 == secret[-4:]
    assert (rotated.key_id, rotated.account_id, rotated.occurred_at) == (key.key_id, ACCOUNT, T0 + H)
    assert rotated.event_id != event.event_id
    assert secret.encode() not in msgspec.json.encode(rotated)


def test_revoke_names_the_current_hash():
    _, _, key = created()
    rotated, _ = rotate(key, ACCOUNT, key.key_id, T0 + H)
    key = evolve(key, rotated)
    revoked = revoke(key, ACCOUNT, key.key_id, T0 + 2 * H)
    assert isinstance(revoked, KeyRevoked)
    assert (revoked.key_id, revoked.account_id, revoked.occurred_at) == (key.key_id, ACCOUNT, T0 + 2 * H)
    assert revoked.key_hash == rotated.key_hash


def command(name: str, key: Key | None, account: str, key_id: str):
    if name == "rotate":
        return rotate(key, account, key_id, T0 + H)
    return revoke(key, account, key_id, T0 + H)


@pytest.mark.parametrize("name", ["rotate", "revoke"])
def test_commands_on_an_unknown_key_are_key_not_found(name):
    with pytest.raises(Refusal) as error:
        command(name, None, ACCOUNT, "key_0000000000000000")
    assert error.value.code == "key_not_found"
    assert "key_0000000000000000" in error.value.message


@pytest.mark.parametrize("name", ["rotate", "revoke"])
def test_commands_on_another_accounts_key_are_key_not_found(name):
    _, _, key = created(account=OTHER)
    with pytest.raises(Refusal) as error:
        command(name, key, ACCOUNT, key.key_id)
    assert error.value.code == "key_not_found"


@pytest.mark.parametrize("name", ["rotate", "revoke"])
def test_commands_on_a_revoked_key_are_key_revoked(name):
    _, _, key = created()
    key = evolve(key, revoke(key, ACCOUNT, key.key_id, T0 + H))
    with pytest.raises(Refusal) as error:
        command(name, key, ACCOUNT, key.key_id)
    assert error.value.code == "key_revoked"
    # another account learns nothing, not even that it is revoked
    with pytest.raises(Refusal) as error:
        command(name, key, OTHER, key.key_id)
    assert error.value.code == "key_not_found"


# --- evolve --------------------------------------------------------------------------------


def lifecycle() -> tuple[list, Key]:
    """created, rotated twice, revoked: the events and the key they make."""
    event, _, key = created()
    events: list = [event]
    for k in (1, 2):
        rotated, _ = rotate(key, ACCOUNT, key.key_id, T0 + k * H)
        events.append(rotated)
        key = evolve(key, rotated)
    revoked = revoke(key, ACCOUNT, key.key_id, T0 + 3 * H)
    events.append(revoked)
    return events, evolve(key, revoked)


def replay(events, key: Key | None = None) -> Key | None:
    for event in events:
        key = evolve(key, event)
    return key


def test_evolve_follows_the_lifecycle():
    events, final = lifecycle()
    assert final.key_hash == events[2].key_hash and final.last4 == events[2].last4
    assert final.rotated_at == T0 + 2 * H
    assert final.revoked_at == T0 + 3 * H
    assert final.created_at == T0
    assert final.applied == {e.event_id for e in events}


def test_applying_the_same_event_twice_gives_the_same_key():
    events, _ = lifecycle()
    key = None
    for event in events:
        once = evolve(key, event)
        assert evolve(once, event) == once
        key = once


def test_a_created_event_again_after_a_rotation_does_not_revert_it():
    events, _ = lifecycle()
    rotated = replay(events[:2])
    assert evolve(rotated, events[0]) == rotated
    assert evolve(rotated, events[0]).key_hash == events[1].key_hash
    # nor does an older rotation replayed after a newer one
    assert evolve(replay(events[:3]), events[1]) == replay(events[:3])


def test_a_created_event_with_a_new_id_for_an_existing_key_changes_nothing():
    events, _ = lifecycle()
    key = replay(events[:2])
    again = msgspec.structs.replace(events[0], event_id="another-id", key_hash="f" * 64)
    assert evolve(key, again) == key


def test_events_for_a_key_that_does_not_exist_make_none():
    events, _ = lifecycle()
    assert evolve(None, events[1]) is None
    assert evolve(None, events[3]) is None


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_replays_with_duplicates_give_the_key_of_the_log(data):
    """At-least-once delivery: any event may come again at any later point."""
    events, final = lifecycle()
    delivered = []
    for event in events:
        delivered.append(event)
        delivered += data.draw(st.lists(st.sampled_from(delivered), max_size=3))
    assert replay(delivered) == final


# --- KeyRegistry ---------------------------------------------------------------------------


def test_registry_by_hash_follows_the_current_secret_only():
    events, _ = lifecycle()
    created_event, first, second, revoked = events
    registry = KeyRegistry()
    key_id = created_event.key_id

    assert registry.apply(created_event).key_hash == created_event.key_hash
    assert set(registry.by_hash) == {created_event.key_hash}

    registry.apply(first)
    assert set(registry.by_hash) == {first.key_hash}
    assert registry.by_hash[first.key_hash] is registry.by_id[key_id]

    registry.apply(second)
    assert set(registry.by_hash) == {second.key_hash}

    registry.apply(revoked)
    assert registry.by_hash == {}
    assert registry.by_id[key_id].revoked_at == T0 + 3 * H


def test_registry_replays_change_nothing():
    events, final = lifecycle()
    registry = KeyRegistry()
    for event in events[:3]:
        registry.apply(event)
    snapshot = (dict(registry.by_id), dict(registry.by_hash))
    for event in events[:3]:
        assert registry.apply(event) == registry.by_id[event.key_id]
    assert (registry.by_id, registry.by_hash) == snapshot
    registry.apply(events[3])
    registry.apply(events[0])  # a late duplicate of the creation does not bring the key back
    assert registry.by_hash == {} and registry.by_id[final.key_id] == final


def test_registry_ignores_events_of_unknown_keys():
    events, _ = lifecycle()
    registry = KeyRegistry()
    assert registry.apply(events[1]) is None
    assert registry.apply(events[3]) is None
    assert registry.by_id == {} and registry.by_hash == {}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_registry_with_many_keys_keeps_one_current_hash_per_live_key(data):
    registry = KeyRegistry()
    keys: dict[str, Key] = {}
    for _ in range(data.draw(st.integers(1, 6))):
        event, _, key = created(account=data.draw(st.sampled_from([ACCOUNT, OTHER])))
        registry.apply(event)
        keys[key.key_id] = key
    for _ in range(data.draw(st.integers(0, 12))):
        key = keys[data.draw(st.sampled_from(sorted(keys)))]
        if key.revoked_at is not None:
            continue
        if data.draw(st.booleans()):
            event, _ = rotate(key, key.account_id, key.key_id, T0 + H)
        else:
            event = revoke(key, key.account_id, key.key_id, T0 + H)
        keys[key.key_id] = registry.apply(event)
    assert registry.by_id == keys
    live = {k.key_hash: k for k in keys.values() if k.revoked_at is None}
    assert registry.by_hash == live


def test_used_only_moves_last_used_forward_in_both_indexes():
    event, _, _ = created()
    registry = KeyRegistry()
    registry.apply(event)
    registry.used(event.key_id, event.account_id, T0 + 2 * H)
    registry.used(event.key_id, event.account_id, T0 + H)  # late, out of order
    registry.used(event.key_id, event.account_id, T0 + 2 * H)
    assert registry.by_id[event.key_id].last_used_at == T0 + 2 * H
    assert registry.by_hash[event.key_hash].last_used_at == T0 + 2 * H
    registry.used(event.key_id, event.account_id, T0 + 3 * H)
    assert registry.by_hash[event.key_hash] == registry.by_id[event.key_id]
    assert registry.by_id[event.key_id].last_used_at == T0 + 3 * H


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_used_ends_at_the_latest_time_whatever_the_order(minutes):
    event, _, key = created()
    registry = KeyRegistry()
    registry.apply(event)
    for minute in minutes:
        registry.used(event.key_id, event.account_id, T0 + timedelta(minutes=minute))
    latest = T0 + timedelta(minutes=max(minutes))
    assert registry.by_id[event.key_id] == dataclasses.replace(key, last_used_at=latest)
    assert registry.by_hash[event.key_hash] == registry.by_id[event.key_id]


def test_last_used_survives_rotation_and_revocation_and_is_not_indexed_when_revoked():
    events, _ = lifecycle()
    registry = KeyRegistry()
    registry.apply(events[0])
    registry.used(events[0].key_id, events[0].account_id, T0 + H / 2)
    registry.apply(events[1])
    assert registry.by_hash[events[1].key_hash].last_used_at == T0 + H / 2
    registry.apply(events[2])
    registry.apply(events[3])
    registry.used(events[0].key_id, events[0].account_id, T0 + 4 * H)
    assert registry.by_id[events[0].key_id].last_used_at == T0 + 4 * H
    assert registry.by_hash == {}


def test_use_logged_under_another_account_is_not_the_keys_use():
    event, _, _ = created()
    registry = KeyRegistry()
    registry.apply(event)
    registry.used(event.key_id, OTHER, T0 + H)
    assert registry.by_id[event.key_id].last_used_at is None


def test_used_on_an_unknown_key_does_nothing():
    registry = KeyRegistry()
    registry.used("key_nope", ACCOUNT, T0)
    assert registry.by_id == {} and registry.by_hash == {}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([ACCOUNT, OTHER, "acc_carol"]), st.integers(0, 10**6)),
        min_size=0,
        max_size=12,
    )
)
def test_of_account_lists_only_that_accounts_keys_oldest_first(specs):
    registry = KeyRegistry()
    made = []
    for account, minute in specs:
        event, _, key = created(account=account, at=T0 + timedelta(minutes=minute))
        registry.apply(event)
        made.append(key)
    for account in (ACCOUNT, OTHER, "acc_carol", "acc_nobody"):
        listed = registry.of_account(account)
        assert {k.key_id for k in listed} == {k.key_id for k in made if k.account_id == account}
        assert all(k.account_id == account for k in listed)
        assert [k.created_at for k in listed] == sorted(k.created_at for k in listed)


def test_of_account_includes_revoked_keys_in_their_current_state():
    events, final = lifecycle()
    registry = KeyRegistry()
    for event in events:
        registry.apply(event)
    assert registry.of_account(ACCOUNT) == [final]
    assert registry.of_account(OTHER) == []


# --- per-account limits, the last management key, suspension ----------------------------------


def test_an_account_has_at_most_100_active_keys_and_revoking_one_makes_room():
    keys = [created()[2] for _ in range(MAX_ACTIVE_KEYS)]
    with pytest.raises(Refusal) as full:
        issue(ACCOUNT, "one too many", "subscription", T0, keys)
    assert full.value.code == "key_limit_reached"
    revoked = evolve(keys[0], revoke(keys[0], ACCOUNT, keys[0].key_id, T0 + H))
    assert revoked is not None
    event, _ = issue(ACCOUNT, "room again", "management", T0 + H, [revoked, *keys[1:]])
    assert event.kind == "management"
    issue(OTHER, "another account", "payg", T0, [])  # the cap is per account


def test_the_owner_cannot_revoke_the_last_management_key_the_operator_can():
    _, _, model = created(kind="subscription")
    _, _, first = created(kind="management")
    _, _, second = created(kind="management")
    keys = [model, first, second]
    gone = evolve(first, revoke(first, ACCOUNT, first.key_id, T0 + H, keys))  # another one is left
    assert gone is not None and gone.revoked_at is not None
    with pytest.raises(Refusal) as last:
        revoke(second, ACCOUNT, second.key_id, T0 + H, [model, gone, second])
    assert last.value.code == "last_management_key"
    assert revoke(second, ACCOUNT, second.key_id, T0 + H).key_id == second.key_id  # the operator: no account_keys
    assert revoke(model, ACCOUNT, model.key_id, T0 + H, [model, gone, second]).key_id == model.key_id


def test_suspension_is_decided_once_and_applied_once_whatever_the_path():
    access = Access(ACCOUNT)
    suspended = set_suspended(access, True, "abuse", T0)
    assert isinstance(suspended, AccountSuspended) and suspended.reason == "abuse"
    after = evolve_access(access, suspended)
    assert after.suspended and after.since == T0
    assert set_suspended(after, True, "again", T0 + H) is None  # already suspended: nothing to record
    lifted = set_suspended(after, False, "", T0 + H)
    assert isinstance(lifted, AccountUnsuspended)
    back = evolve_access(after, lifted)
    assert not back.suspended and back.since == T0 + H
    # The responder applies its events at once and the projection again later: the late copy of the
    # suspension must not suspend the account again.
    assert evolve_access(back, suspended) == back


def test_a_lookup_says_when_the_keys_account_is_suspended():
    registry = KeyRegistry()
    event, secret, _ = created()
    registry.apply(event)
    other_event, other_secret, _ = created(account=OTHER)
    registry.apply(other_event)
    found = registry.lookup(hash_secret(secret))
    assert found is not None and not found.account_suspended
    suspended = set_suspended(registry.access_of(ACCOUNT), True, "", T0 + H)
    assert suspended is not None
    registry.apply_access(suspended)
    found = registry.lookup(hash_secret(secret))
    assert found is not None and found.account_suspended
    other = registry.lookup(hash_secret(other_secret))
    assert other is not None and not other.account_suspended
