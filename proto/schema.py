"""Generate the JSON Schema of the wire contract: `python -m proto.schema > proto/schema.json`."""

import json
import sys

import msgspec

from proto.v1 import events, messages


def _tagged(module: object) -> tuple[type, ...]:
    """Every event and message of a module: its tagged Structs, in the order they are written."""
    return tuple(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__.split(".")[: len(getattr(module, "__name__", "").split("."))]
        == getattr(module, "__name__", "").split(".")  # the module's own, or its package's modules'
        and value.__struct_config__.tag is not None
        and not value.__name__.endswith("Event")  # the Event and AccountEvent bases
    )


CONTRACT: tuple[type, ...] = _tagged(events) + _tagged(messages)
"""Derived, not listed: a new event or message cannot be left out of the schema."""


def render() -> str:
    schemas, components = msgspec.json.schema_components(CONTRACT, ref_template="#/$defs/{name}")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://flowplan.dev/proto/v1/schema.json",
        "title": "flowplan wire contract v1",
        "oneOf": list(schemas),
        "$defs": components,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
