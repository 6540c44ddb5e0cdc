"""Each service's view of the one Settings (libs/settings.py): every variable it names is a setting
loaded from FLOWPLAN_*, and the Settings every process loads satisfies every view."""

from pathlib import Path

import msgspec
import pytest

from libs.runtime import Runtime
from libs.settings import Settings, is_set, load_settings, read_setting, settings_environ
from libs.settings_views import (
    BillingSettings,
    ConsoleSettings,
    DatabaseSettings,
    GatewaySettings,
    IngressSettings,
    KeyCacheSettings,
    KeysSettings,
    ProjectionSettings,
    QuotaSettings,
    RefundSettings,
    RuntimeSettings,
    StreamSettings,
    narrowed,
)
from libs.settings_views import view_members as members
from services.gateway.app import GatewayService
from services.simulator.settings import SimulatorSettings

VIEWS = (
    StreamSettings, RuntimeSettings, DatabaseSettings, ProjectionSettings, KeyCacheSettings, QuotaSettings,
    KeysSettings, BillingSettings, RefundSettings, GatewaySettings, IngressSettings, ConsoleSettings,
)  # fmt: skip


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.__name__)
def test_every_view_names_only_loaded_settings(view: type) -> None:
    loaded = {field.name for field in msgspec.structs.fields(Settings)}
    assert members(view) and members(view) <= loaded
    assert isinstance(load_settings({}), view)


def test_a_service_view_is_narrower_than_the_whole() -> None:
    """The gateway's database_url problem: quota, keys, billing and refund see no tokens or other ports."""
    for view in (QuotaSettings, KeysSettings, BillingSettings, RefundSettings):
        assert not members(view) & {"admin_token", "ingest_token", "console_secret", "gateway_port", "upstreams"}
    assert "keys_port" not in members(QuotaSettings)


def test_the_gateway_is_not_handed_the_database_or_the_admin_tokens() -> None:
    secret = {"database_url", "admin_token", "ingest_token", "ingest_tokens", "payment_webhook_secret", "smtp_url"}
    assert not members(GatewaySettings) & secret
    gateway = GatewayService(load_settings({"FLOWPLAN_DATABASE_URL": "postgresql://x@db/secret"}, gateway_port=9))
    assert isinstance(gateway.settings, GatewaySettings) and gateway.settings.gateway_port == 9
    for name in secret:
        assert not hasattr(gateway.settings, name), name
    assert not hasattr(gateway.runtime.settings, "database_url")


async def test_a_runtime_without_database_settings_refuses_migrations() -> None:
    runtime = Runtime("gateway", narrowed(load_settings({}), GatewaySettings))
    with pytest.raises(TypeError, match="database_url"):
        await runtime.connect(Path("migrations"))


def test_the_variables_read_outside_a_service_go_through_the_one_loader(tmp_path: Path) -> None:
    assert read_setting("failpoint", {}) == "" and read_setting("failpoint", {"FLOWPLAN_FAILPOINT": "a:2"}) == "a:2"
    assert read_setting("state_dir", {}) == ".flowplan"
    assert read_setting("state_dir", {"FLOWPLAN_STATE_DIR": "/tmp/fp"}) == "/tmp/fp"
    secret = tmp_path / "db"
    secret.write_text("postgresql://u@h/db\n")
    assert is_set("database_url", {"FLOWPLAN_DATABASE_URL_FILE": str(secret)})
    assert not is_set("nats_url", {"FLOWPLAN_NATS_URL": ""})


def test_the_simulator_reads_its_settings_from_the_one_settings() -> None:
    whole = load_settings({}, simulator_port=9191, simulator_tokens_per_s=0, simulator_require_key="k",
                          simulator_max_body_bytes=1000, payment_webhook_url="http://hook")  # fmt: skip
    again = SimulatorSettings.from_env(settings_environ(whole))  # what a child process started with them loads
    assert (again.port, again.tokens_per_s, again.require_key, again.max_body_bytes, again.payment_webhook_url) == (
        9191, 0, "k", 1000, "http://hook",
    )  # fmt: skip
    assert SimulatorSettings.from_settings(whole) == again
