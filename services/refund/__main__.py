"""refund: 24-hour refunds of paid subscriptions, settled once pending usage is counted, paid out once."""

from libs.service import run_service
from services.refund.app import RefundService

run_service(RefundService)
