"""The desired assignment of partitions to a service's instances (libs/rendezvous.py): the same from the
same members, balanced to within one partition, and its runner-up is the owner once the owner left."""

import collections

from hypothesis import given
from hypothesis import strategies as st

from libs.rendezvous import assignment, runner_up

members = st.lists(st.text("abcdefgh-0123456789", min_size=1, max_size=12), min_size=1, max_size=8, unique=True)
partitions = st.integers(min_value=1, max_value=64)


@given(members, partitions)
def test_every_member_holds_its_share_rounded_down_or_up_whatever_its_name(names: list[str], count: int) -> None:
    owners = assignment(count, names)
    loads = collections.Counter(owners)
    assert set(loads) <= set(names) and len(owners) == count
    assert all(count // len(names) <= loads[name] <= -(-count // len(names)) for name in names)
    assert assignment(count, list(reversed(names))) == owners  # every instance computes the same


@given(members, partitions)
def test_the_runner_up_is_who_owns_the_partition_once_its_owner_left(names: list[str], count: int) -> None:
    owners = assignment(count, names)
    for partition, owner in enumerate(owners):
        expected = assignment(count, [n for n in names if n != owner])[partition] if len(names) > 1 else None
        assert runner_up(partition, names, count) == expected != owner


def test_two_instances_split_four_partitions_two_and_two() -> None:
    """Plain rendezvous hashing gave one of two instances all 4 partitions in 1 run of 8."""
    for pid in range(1000, 1400, 2):
        assert sorted(collections.Counter(assignment(4, [f"host-{pid}", f"host-{pid + 1}"])).values()) == [2, 2]
