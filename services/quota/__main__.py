from libs.service import run_service
from services.quota.app import YOUNG_COLLECTION_EVERY, QuotaService

run_service(QuotaService, young_collection_every=YOUNG_COLLECTION_EVERY)
