"""gateway: the OpenAI- and Anthropic-compatible model API. Authenticates the key, asks quota
(plan models, RPM, windows) before each call, forwards to the upstream, reads the real usage
from the upstream's own report, streams as it arrives, and records the call's usage.

Where things are: the routes (api.py); one call's pipeline (pipeline.py) and the metering of
its answer (meter.py); the protocols as adapters (protocols.py); translation between them
(translate/); usage reading (usage.py); the OpenAPI document (openapi.py, openapi.json)."""
