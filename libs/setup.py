"""The one idempotent set-up step: database, streams, every service's migrations."""

import asyncio
import importlib.util
from pathlib import Path

from libs.connections import close_nats, connect_nats
from libs.db import ensure_database, grant_read_only, migrate_async
from libs.eventlog.streams import declare_streams
from libs.settings import Settings

GRAFANA_ROLE = "flowplan_grafana"
GRAFANA_SCHEMAS = ["quota", "billing", "refund"]
"""What dashboards read: windows, plans, money. Not keys (hashes) nor ingress's dedupe table."""


def migration_dirs() -> list[Path]:
    """Every service's migrations folder, found on disk (libs never imports a service)."""
    spec = importlib.util.find_spec("services")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(root.glob("*/migrations"))


async def set_up(settings: Settings) -> list[str]:
    """Create what is missing; change nothing that is already right. Returns migrations applied.
    With FLOWPLAN_GRAFANA_DB_PASSWORD set, also Grafana's read-only role (its password kept in step)."""
    ensure_database(settings.database_url)
    nc = await connect_nats(settings.nats_url, "setup")
    try:
        await declare_streams(nc.jetstream(), settings)
    finally:
        await close_nats(nc)
    applied: list[str] = []
    for folder in migration_dirs():
        applied += await migrate_async(settings.database_url, folder)
    if settings.grafana_db_password:
        await asyncio.to_thread(
            grant_read_only, settings.database_url, GRAFANA_ROLE, settings.grafana_db_password, GRAFANA_SCHEMAS
        )
    return applied
