from libs.service import run_service
from services.gateway.app import GatewayService

run_service(GatewayService)
