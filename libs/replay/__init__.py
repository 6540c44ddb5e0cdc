"""Ops replay: rebuild a projection from the event log into a fresh schema, compare it with the
live one, and swap it in atomically while the service goes on.

The service that owns a projection does the work with its own projection code (control.py,
wired for every projection by Runtime.project); `flowplan replay` (libs/ops/replay.py) asks it over
NATS and shows the progress. A projection written by several instances of its service has them all
paused for the catch-ups and the swap, and reloaded after it (instances.py). Nothing here imports a service.
"""
