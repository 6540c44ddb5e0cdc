"""Subject layout of the event log.

Publishers write `flowplan.events.<category>.<account>.<Type>`. The stream's subject
transform stores each event as `flowplan.p.<partition>.<category>.<account>.<Type>`,
where the partition is a hash of the account: one account's events live in one
partition, in order, and each projection reads each partition with one durable pull
consumer.

The category ("usage" for the high-volume usage events, "account" for everything
else) lets a consumer that needs only one kind use a single wildcard filter: NATS
serves one filter subject far faster than a list of them.
"""

import re

PUBLISH_PREFIX = "flowplan.events"
STORED_PREFIX = "flowplan.p"
DLQ_PREFIX = "flowplan.dlq"

ACCOUNT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What an account id may look like: it is a subject token."""


CATEGORIES = ("account", "usage")


def publish_subject(category: str, account: str, event_type: str) -> str:
    return f"{PUBLISH_PREFIX}.{category}.{account}.{event_type}"


def partition_filter(partition: int, category: str | None = None) -> str:
    """Everything in a partition, or one category of it."""
    return f"{STORED_PREFIX}.{partition}.{category}.>" if category else f"{STORED_PREFIX}.{partition}.>"


def transform_source() -> str:
    return f"{PUBLISH_PREFIX}.*.*.*"


def transform_destination(partitions: int) -> str:
    partition = f"{{{{partition({partitions},2)}}}}"
    return f"{STORED_PREFIX}.{partition}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"


def partition_for(account: str, partitions: int) -> int:
    """The partition the stream's transform stores the account's events in, computed here: NATS's
    `partition(n, ...)` is FNV-1a (32 bit) of the wildcard's token, modulo n. Requests for an
    account go to its partition's owner by it (docs/scaling.md), so it must equal the server's:
    tests/integration/test_quota_partitions.py checks it against a real nats-server."""
    h = 0x811C9DC5
    for byte in account.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def partitioned(subject: str, partition: int) -> str:
    """The subject the owner of a partition answers a per-account request on (quota.check ->
    quota.check.p.3): services whose instances own partitions (services/quota/partitions.py)."""
    return f"{subject}.p.{partition}"


def owner_subject(subject: str, account: str, partitions: int) -> str:
    """Where a request about the account goes: its partition's owner."""
    return partitioned(subject, partition_for(account, partitions))


def partition_of(stored_subject: str) -> int:
    """The partition in a stored subject (flowplan.p.<partition>.…)."""
    return int(stored_subject.split(".")[2])


def dlq_subject(projection: str) -> str:
    return f"{DLQ_PREFIX}.{projection}"


def event_type_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]
