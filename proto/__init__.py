"""flowplan's wire contract: every event and request/reply message, versioned.

proto/ is the one source of truth for what crosses NATS. Services import from here,
never from each other. `python -m proto.schema` regenerates proto/schema.json.
"""
