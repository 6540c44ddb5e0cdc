"""keys' composition root."""

from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.runtime import Runtime
from libs.settings import KeysSettings
from proto.v1 import subjects
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.keys.responder import KeysResponder

MIGRATIONS = Path(__file__).parent / "migrations"


class KeysService:
    def __init__(self, settings: KeysSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = KeyRegistry()
        self.runtime = Runtime("keys", settings)

    async def start(self) -> None:
        runtime = self.runtime
        await runtime.connect(MIGRATIONS)
        projection = KeysProjection(self.registry)
        async with runtime.db.acquire() as conn:
            await self.registry.load(conn, projection.schema)
        await runtime.project(projection)
        responder = KeysResponder(self.registry, await runtime.publisher(), runtime.nc, self.clock)
        await runtime.answer(subjects.KEY_LOOKUP, responder.on_lookup)
        responder.serve(runtime)
        await runtime.serve(self.settings.keys_port)

    async def stop(self) -> None:
        await self.runtime.close()
