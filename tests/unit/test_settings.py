"""Settings come from FLOWPLAN_* variables, typed; a child process can be handed the same ones."""

import pytest
from msgspec import ValidationError

from libs.settings import load_settings, settings_environ


def test_environment_is_typed_and_overrides_win() -> None:
    settings = load_settings({"FLOWPLAN_PARTITIONS": "8", "FLOWPLAN_ACK_WAIT_S": "2.5", "FLOWPLAN_HOST": ""})
    assert settings.partitions == 8 and settings.ack_wait_s == 2.5 and settings.host == "127.0.0.1"
    assert load_settings({"FLOWPLAN_PARTITIONS": "8"}, partitions=2).partitions == 2
    with pytest.raises(ValidationError):
        load_settings({"FLOWPLAN_PARTITIONS": "many"})


def test_a_child_process_environment_loads_the_same_settings() -> None:
    settings = load_settings({}, gateway_port=18080, upstreams='{"default": {"url": "http://x"}}')
    assert load_settings(settings_environ(settings)) == settings
