"""Each service's view of the one Settings (libs/settings.py): every variable it names is a setting
loaded from FLOWPLAN_*, and the Settings every process loads satisfies every view."""

import msgspec
import pytest

from libs.settings import (
    BillingSettings,
    KeysSettings,
    QuotaSettings,
    RefundSettings,
    RuntimeSettings,
    Settings,
    StreamSettings,
    load_settings,
)

VIEWS = (StreamSettings, RuntimeSettings, QuotaSettings, KeysSettings, BillingSettings, RefundSettings)


def members(view: type) -> set[str]:
    return {name for klass in view.__mro__ for name, value in vars(klass).items() if isinstance(value, property)}


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
