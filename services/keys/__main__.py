from libs.service import run_service
from services.keys.app import KeysService

run_service(KeysService)
