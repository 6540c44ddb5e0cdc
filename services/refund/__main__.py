from libs.service import run_service
from services.refund.app import RefundService

run_service(RefundService)
