from libs.service import run_service
from services.console.app import ConsoleService

run_service(ConsoleService)
