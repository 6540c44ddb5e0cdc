"""`python -m services.simulator`: serve until SIGINT/SIGTERM."""

from libs.service import run_service
from services.simulator.app import SimulatorService
from services.simulator.settings import SimulatorSettings

run_service(lambda settings: SimulatorService(SimulatorSettings.from_settings(settings)))
