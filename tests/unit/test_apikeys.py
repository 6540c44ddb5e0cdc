"""API key secrets: prefixes, checksum (typos are refused without a lookup), SHA-256 hashes."""

import hashlib
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.apikeys import PREFIXES, generate, hash_secret, kind_of

ALPHABET = string.digits + string.ascii_letters
KINDS = ["subscription", "payg", "management"]


@pytest.mark.parametrize(
    ("kind", "prefix"), [("subscription", "sk-ss-v1-"), ("payg", "sk-pg-v1-"), ("management", "sk-mg-v1-")]
)
def test_generate_has_the_kind_prefix_and_is_recognised(kind, prefix):
    secret = generate(kind)
    assert secret.startswith(prefix)
    assert re.fullmatch(re.escape(prefix) + r"[0-9A-Za-z]{49}", secret)
    assert kind_of(secret) == kind
    assert PREFIXES[kind] == prefix


def test_generated_secrets_are_high_entropy_and_distinct():
    secrets_ = {generate("subscription") for _ in range(500)}
    assert len(secrets_) == 500
    bodies = [s[len("sk-ss-v1-") :][:43] for s in secrets_]
    # every position of the random body takes many different characters
    for position in range(43):
        assert len({b[position] for b in bodies}) > 20


@pytest.mark.parametrize("kind", KINDS)
def test_any_single_character_change_is_refused(kind):
    for _ in range(3):
        secret = generate(kind)
        for i, original in enumerate(secret):
            for replacement in ALPHABET + "-_+/= é":
                if replacement == original:
                    continue
                changed = secret[:i] + replacement + secret[i + 1 :]
                assert kind_of(changed) is None, (secret, i, replacement)


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_extension_and_deletion_are_refused(kind):
    secret = generate(kind)
    for n in range(len(secret)):
        assert kind_of(secret[:n]) is None
        assert kind_of(secret[n + 1 :]) is None
        assert kind_of(secret[:n] + secret[n + 1 :]) is None  # one character deleted
    for extra in "0aZ":
        assert kind_of(secret + extra) is None
        assert kind_of(extra + secret) is None


@pytest.mark.parametrize("kind", KINDS)
def test_swapping_two_adjacent_characters_is_refused(kind):
    secret = generate(kind)
    for i in range(len(secret) - 1):
        if secret[i] != secret[i + 1]:
            swapped = secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]
            assert kind_of(swapped) is None, (secret, i)


def test_the_prefix_of_one_kind_with_the_body_of_another_is_refused():
    secret = generate("subscription")
    assert kind_of("sk-pg-v1-" + secret[len("sk-ss-v1-") :]) is None
    secret = generate("payg")
    assert kind_of("sk-ss-v1-" + secret[len("sk-pg-v1-") :]) is None


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "sk-ss-v1-",
        "sk-pg-v1-",
        "sk-ss-v2-" + "a" * 49,
        "SK-SS-V1-" + "a" * 49,
        "Bearer sk-ss-v1-abc",
        "sk-ss-v1-" + "a" * 49,
    ],
)
def test_made_up_keys_are_refused(junk):
    assert kind_of(junk) is None


@given(st.text(max_size=80))
def test_random_text_is_refused(text):
    assert kind_of(text) is None
    assert kind_of("sk-ss-v1-" + text) is None


def test_hash_secret_is_sha256_hex():
    secret = generate("payg")
    digest = hash_secret(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret(secret) == digest  # stable
    assert hash_secret(secret[:-1] + ("0" if secret[-1] != "0" else "1")) != digest
