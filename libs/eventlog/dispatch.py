"""Typed projection dispatch: a projection's handlers, registered by event class.

A projection class derives from `EventHandlers[B]` and marks each handler method with
`@handles(SomeEvent, ...)`. When the class is defined, its registry (`handlers`) and the event
types the runner subscribes to (`event_types`) are derived from those marks: an event handled
is an event read, an event not handled is not read, and no list of names can drift from the
code. A class that is not an event of the log, a handler whose `event` annotation does not
accept what it claims to handle, or two handlers of one event fail at import, that is at
start-up (and the runner refuses a projection naming an event type the log does not have).

Handlers take the batch's state (`B`: the projection's own, typically the connection and
per-type collectors that apply() flushes once per batch, so batched writes stay one
statement per batch), the event's stream sequence and the event:

    class Batch:  # one per apply()
        conn: asyncpg.Connection
        usage: list[UsageRecorded]

    class SomeProjection(EventHandlers[Batch]):
        @handles(UsageRecorded)
        async def _usage(self, batch: Batch, seq: int, event: UsageRecorded) -> None:
            batch.usage.append(event)
"""

import inspect
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from proto.v1.events import AnyEvent, Event

EVENT_CLASSES: dict[str, type[Event]] = {cls.__name__: cls for cls in typing.get_args(AnyEvent)}
"""Every event the log holds, by the type name its subjects end with."""

B = TypeVar("B")
F = TypeVar("F", bound=Callable[..., Awaitable[None]])
Handler = Callable[[Any, Any, int, Any], Awaitable[None]]

_MARK = "__flowplan_handles__"


def unknown_event_types(names: Sequence[str]) -> list[str]:
    """The names that are no event of the log (a typo, or an event not in proto.v1)."""
    return [name for name in names if name not in EVENT_CLASSES]


def handles(*types: type[Event]) -> Callable[[F], F]:
    """Mark a projection method as the handler of these event classes."""
    if not types:
        raise TypeError("@handles needs at least one event class")
    for cls in types:
        if EVENT_CLASSES.get(getattr(cls, "__name__", "")) is not cls:
            raise TypeError(f"@handles({cls!r}): not an event of the log (proto.v1.events.AnyEvent)")

    def mark(handler: F) -> F:
        setattr(handler, _MARK, types)
        return handler

    return mark


def _check_annotation(owner: type, handler: Handler, types: tuple[type[Event], ...]) -> None:
    """The handler's last parameter (the event) must accept every class it is registered for."""
    event_param = list(inspect.signature(handler).parameters)[-1]
    hint = typing.get_type_hints(handler).get(event_param)
    if hint is None:
        return
    accepted = typing.get_args(hint) or (hint,)
    for cls in types:
        if not any(isinstance(a, type) and issubclass(cls, a) for a in accepted):
            raise TypeError(f"{owner.__name__}.{handler.__name__} handles {cls.__name__} but takes {hint}")


class EventHandlers(Generic[B]):
    """The base of a projection: its handlers by event class, and the event types it reads."""

    handlers: dict[type[Event], Handler]
    event_types: tuple[str, ...]
    """The names of the handled events, derived from `handlers`: what the runner subscribes to."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Event], Handler] = {}
        for klass in reversed(cls.__mro__):  # a subclass may override an inherited handler
            own: set[type[Event]] = set()
            for attribute in vars(klass).values():
                types: tuple[type[Event], ...] = getattr(attribute, _MARK, ())
                if not types:
                    continue
                _check_annotation(cls, attribute, types)
                for event_class in types:
                    if event_class in own:
                        raise TypeError(f"{klass.__name__}: two handlers of {event_class.__name__}")
                    own.add(event_class)
                    handlers[event_class] = attribute
        if not handlers:
            raise TypeError(f"{cls.__name__} handles no event: mark its handlers with @handles(...)")
        cls.handlers = handlers
        cls.event_types = tuple(event_class.__name__ for event_class in handlers)

    async def dispatch(self, batch: B, items: Sequence[tuple[int, AnyEvent]]) -> None:
        """Hand each event of the batch, in log order, to its handler."""
        handlers = self.handlers
        for seq, event in items:
            handler = handlers.get(type(event))
            if handler is not None:  # the runner passes only event_types; a foreign payload is skipped as before
                await handler(self, batch, seq, event)
