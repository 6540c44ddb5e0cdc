from libs.service import run_service
from services.quota.app import QuotaService

run_service(QuotaService)
