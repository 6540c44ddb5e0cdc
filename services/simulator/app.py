"""The simulator's composition root."""

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from libs.observability import install as install_metrics
from libs.web import add_metrics_route
from services.simulator import metrics
from services.simulator.anthropic_api import AnthropicApi
from services.simulator.common import ANY_VENDOR
from services.simulator.images import ImagesApi
from services.simulator.mailbox import Mailbox
from services.simulator.openai_api import OpenAIApi
from services.simulator.payments import LocalPaymentProvider
from services.simulator.responses_api import ResponsesApi
from services.simulator.settings import SimulatorSettings

log = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_S = 2.0
"""How long a stop waits for streams still in flight."""
_HEALTHY = b'{"ok":true}'


@web.middleware
async def count_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    route = request.match_info.route.resource
    metrics.requests.add(1, {"route": route.canonical if route else "", "status": str(response.status)})
    return response


def build_app(settings: SimulatorSettings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[count_requests])
    for api in (OpenAIApi, ResponsesApi, AnthropicApi, ImagesApi):
        api(settings).routes(app)  # each model in its vendor's protocols only
        api(settings, any_vendor=True).routes(app, ANY_VENDOR)  # every model in every protocol
    LocalPaymentProvider(settings).routes(app)
    Mailbox().routes(app)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=_HEALTHY, content_type="application/json")

    app.router.add_get("/healthz", healthz)
    add_metrics_route(app)
    return app


class SimulatorService:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        install_metrics("simulator")
        self._runner: web.AppRunner | None = None
        self.port = settings.port
        """The port served on; the one the system chose when settings.port is 0."""

    async def start(self) -> None:
        settings = self.settings
        self._runner = web.AppRunner(build_app(settings), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        log.info(
            "simulator: serving on http://%s:%d (%s tokens/s, first token after %s ms)",
            settings.host,
            self.port,
            settings.tokens_per_s or "unpaced",
            settings.first_token_ms,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
