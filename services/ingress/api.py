"""ingress's HTTP API: one class mixing in each context's routes (services/ingress/routes/), wired
from the one route table. Thin: authenticate, decode, call the domain, publish, answer."""

from aiohttp import web

from services.ingress.routes import install
from services.ingress.routes.account import AccountRoutes
from services.ingress.routes.admin import AdminRoutes
from services.ingress.routes.billing import BillingRoutes
from services.ingress.routes.keys import KeyRoutes
from services.ingress.routes.metering import MeteringRoutes
from services.ingress.routes.refunds import RefundRoutes


class IngressApi(MeteringRoutes, AccountRoutes, KeyRoutes, BillingRoutes, RefundRoutes, AdminRoutes):
    def routes(self, app: web.Application) -> None:
        install(app, self)
