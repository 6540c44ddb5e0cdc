"""Subject layout of the event log.

Publishers write `flowplan.events.<account>.<Type>`. The stream's subject transform
stores each event as `flowplan.p.<partition>.<account>.<Type>`, where the partition
is a hash of the account: one account's events live in one partition, in order, and
each projection reads each partition with one durable pull consumer.
"""

import re

PUBLISH_PREFIX = "flowplan.events"
STORED_PREFIX = "flowplan.p"
DLQ_PREFIX = "flowplan.dlq"

ACCOUNT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What an account id may look like: it is a subject token."""


def publish_subject(account: str, event_type: str) -> str:
    return f"{PUBLISH_PREFIX}.{account}.{event_type}"


def partition_filter(partition: int, event_type: str = "*") -> str:
    return f"{STORED_PREFIX}.{partition}.*.{event_type}"


def transform_destination(partitions: int) -> str:
    return f"{STORED_PREFIX}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"


def dlq_subject(projection: str) -> str:
    return f"{DLQ_PREFIX}.{projection}"


def event_type_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]
