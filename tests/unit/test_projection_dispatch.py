"""Typed projection dispatch (libs/eventlog/dispatch.py): handlers registered by event class, the
subscribed event types derived from them, and every mistake refused when the class is defined."""

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from libs.eventlog.dispatch import EVENT_CLASSES, EventHandlers, handles, unknown_event_types
from libs.eventlog.projection import Applied
from libs.eventlog.runner import ProjectionRunner
from proto.v1 import AccountCreated, InsiderStatusEnded, InsiderStatusSet, QuotaCheck, UsageRecorded
from services.billing.projection import BillingProjection
from services.ingress.projection import IngressProjection
from services.keys.projection import KeysProjection
from services.quota.projection import QuotaProjection
from services.refund.projection import RefundProjection

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Seen:
    calls: list[tuple[str, int, str]] = field(default_factory=list)


class Recorder(EventHandlers[Seen]):
    name = "recorder"

    @handles(AccountCreated)
    async def _created(self, seen: Seen, seq: int, event: AccountCreated) -> None:
        seen.calls.append(("created", seq, event.account_id))

    @handles(InsiderStatusSet, InsiderStatusEnded)
    async def _insider(self, seen: Seen, seq: int, event: InsiderStatusSet | InsiderStatusEnded) -> None:
        seen.calls.append(("insider", seq, event.account_id))


def test_event_types_are_derived_from_the_handlers() -> None:
    assert Recorder.event_types == ("AccountCreated", "InsiderStatusSet", "InsiderStatusEnded")


def test_every_projection_reads_exactly_the_events_it_handles() -> None:
    for projection in (QuotaProjection, BillingProjection, RefundProjection, KeysProjection, IngressProjection):
        assert projection.event_types, projection
        assert not unknown_event_types(projection.event_types)
        assert set(projection.event_types) == {cls.__name__ for cls in projection.handlers}
    assert "UsageRecorded" in QuotaProjection.event_types
    assert "UsageRecorded" not in IngressProjection.event_types


async def test_dispatch_hands_each_event_to_its_handler_in_log_order() -> None:
    created = AccountCreated(event_id="e1", account_id="a1", occurred_at=T0, name="n")
    insider = InsiderStatusSet(event_id="e2", account_id="a1", occurred_at=T0, insider=True)
    seen = Seen()
    await Recorder().dispatch(seen, [Applied(5, insider), Applied(7, created), Applied(9, insider)])
    assert seen.calls == [("insider", 5, "a1"), ("created", 7, "a1"), ("insider", 9, "a1")]


def test_a_class_that_is_no_event_of_the_log_is_refused() -> None:
    with pytest.raises(TypeError, match="not an event of the log"):
        handles(QuotaCheck)  # type: ignore[arg-type]


def test_a_handler_whose_annotation_does_not_take_the_event_is_refused() -> None:
    with pytest.raises(TypeError, match="handles UsageRecorded but takes"):

        class Wrong(EventHandlers[Seen]):
            @handles(UsageRecorded)
            async def _created(self, seen: Seen, seq: int, event: AccountCreated) -> None: ...


def test_two_handlers_of_one_event_are_refused() -> None:
    with pytest.raises(TypeError, match="two handlers of AccountCreated"):

        class Twice(EventHandlers[Seen]):
            @handles(AccountCreated)
            async def _one(self, seen: Seen, seq: int, event: AccountCreated) -> None: ...

            @handles(AccountCreated)
            async def _two(self, seen: Seen, seq: int, event: AccountCreated) -> None: ...


def test_a_projection_without_handlers_is_refused() -> None:
    with pytest.raises(TypeError, match="handles no event"):

        class Empty(EventHandlers[Seen]):
            pass


class Misspelt:
    """A projection written by hand with a typo in its event types (what dispatch.py prevents)."""

    name = "misspelt"
    schema = "misspelt"
    category = None
    event_types = ("AccountCreated", "UsageRecordd")


def test_the_runner_refuses_a_projection_naming_an_unknown_event_type() -> None:
    with pytest.raises(ValueError, match="UsageRecordd"):
        ProjectionRunner(Misspelt(), None, None, stream="s", partitions=1)  # type: ignore[arg-type]
    assert set(EVENT_CLASSES) >= set(QuotaProjection.event_types)
