from libs.service import run_service
from services.billing.app import BillingService

run_service(BillingService)
