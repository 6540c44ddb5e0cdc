from libs.service import run_service
from services.ingress.app import IngressService

run_service(IngressService)
