"""Which instance of a service owns which partition: rendezvous hashing with bounded loads, computed
by every instance from the same list of live members (libs/leases.py acquires what it gives)."""

import functools
import hashlib
from collections.abc import Sequence


def _weight(partition: int, member: str) -> bytes:
    return hashlib.blake2b(f"{partition}/{member}".encode(), digest_size=8).digest()


@functools.lru_cache(maxsize=256)
def _assign(partitions: int, members: tuple[str, ...]) -> tuple[str, ...]:
    floor, bigger = divmod(partitions, len(members))
    load = dict.fromkeys(members, 0)
    at_ceiling = 0
    owners = []
    for partition in range(partitions):
        for member in sorted(members, key=lambda m: _weight(partition, m), reverse=True):
            if load[member] < floor:
                break
            if load[member] == floor and at_ceiling < bigger:
                at_ceiling += 1
                break
        load[member] += 1
        owners.append(member)
    return tuple(owners)


def assignment(partitions: int, members: Sequence[str]) -> tuple[str, ...]:
    """The owner of each partition among the members: rendezvous hashing with bounded loads. Each
    partition goes to the member with the highest hash of (partition, member) that still has room,
    and every member gets floor(P/N) or ceil(P/N) partitions. Plain rendezvous hashing is balanced
    only on average: with 4 partitions and 2 instances it gives one of them all 4 in 1 run of 8
    (the instance names hold process ids), and that instance then does all the work. Every instance
    that sees the same members computes the same assignment; a member leaving or joining moves
    about its share, mostly its own partitions."""
    return _assign(partitions, tuple(sorted(set(members))))


def runner_up(partition: int, members: Sequence[str], partitions: int) -> str | None:
    """The member that would own the partition if its owner left (None with fewer than two)."""
    if len(set(members)) < 2:
        return None
    owner = assignment(partitions, members)[partition]
    return assignment(partitions, [m for m in members if m != owner])[partition]
