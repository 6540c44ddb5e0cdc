"""No well-known tokens off this machine: an empty token is an error, the public development tokens
are refused by a service that listens beyond loopback, and secrets may come from files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.settings import (
    DEV_ADMIN_TOKEN,
    DEV_INGEST_TOKEN,
    TOKENS,
    SettingsError,
    check_exposure,
    is_loopback,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
REAL = {f"FLOWPLAN_{name.upper()}": f"a-real-{name}" for name in TOKENS}
"""Every secret with a development default (admin, ingest, console, webhook), set to a real value."""


@pytest.mark.parametrize("variable", ["FLOWPLAN_ADMIN_TOKEN", "FLOWPLAN_INGEST_TOKEN"])
def test_an_empty_token_is_an_error_not_the_development_default(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: ""})


def test_unset_tokens_are_the_development_ones_which_loopback_accepts() -> None:
    settings = load_settings({})
    assert (settings.admin_token, settings.ingest_token) == (DEV_ADMIN_TOKEN, DEV_INGEST_TOKEN)
    check_exposure(settings)  # 127.0.0.1: only this machine can use them
    check_exposure(load_settings({"FLOWPLAN_HOST": "::1"}))
    check_exposure(load_settings({"FLOWPLAN_HOST": "localhost"}))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "flowplan.example.com"])
@pytest.mark.parametrize("variable", sorted(REAL))
def test_a_service_beyond_loopback_refuses_a_development_token(host: str, variable: str) -> None:
    unset = {k: v for k, v in REAL.items() if k != variable}  # that one keeps its development default
    with pytest.raises(SettingsError, match=variable):
        check_exposure(load_settings({"FLOWPLAN_HOST": host, **unset}))
    with pytest.raises(SettingsError, match=variable):
        check_exposure(load_settings({"FLOWPLAN_HOST": host, **unset, variable: TOKENS[variable[9:].lower()]}))


def test_real_tokens_may_listen_anywhere() -> None:
    check_exposure(load_settings({"FLOWPLAN_HOST": "0.0.0.0", **REAL}))
    assert not is_loopback("0.0.0.0") and is_loopback("127.0.0.2")


def test_secrets_come_from_files(tmp_path: Path) -> None:
    files = {
        "ADMIN_TOKEN": "admin-from-file\n",
        "INGEST_TOKEN": "ingest-from-file",
        "DATABASE_URL": "postgresql://flowplan:pw@db:5432/flowplan\n",
        "UPSTREAMS": '{"default": {"url": "https://api.example.com", "key": "sk-upstream"}}\n',
        "GRAFANA_DB_PASSWORD": "grafana-pw\n",
    }
    env = {}
    for name, text in files.items():
        path = tmp_path / name.lower()
        path.write_text(text)
        env[f"FLOWPLAN_{name}_FILE"] = str(path)
    settings = load_settings(env)
    assert settings.admin_token == "admin-from-file"  # the file's trailing newline is not part of it
    assert settings.ingest_token == "ingest-from-file"
    assert settings.database_url == "postgresql://flowplan:pw@db:5432/flowplan"
    assert settings.upstreams.endswith('"sk-upstream"}}')
    assert settings.grafana_db_password == "grafana-pw"


def test_a_secret_file_that_is_empty_missing_or_doubled_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="FLOWPLAN_ADMIN_TOKEN"):
        load_settings({"FLOWPLAN_ADMIN_TOKEN_FILE": str(empty)})
    with pytest.raises(SettingsError, match="FLOWPLAN_INGEST_TOKEN_FILE"):
        load_settings({"FLOWPLAN_INGEST_TOKEN_FILE": str(tmp_path / "missing")})
    token = tmp_path / "token"
    token.write_text("from-file")
    with pytest.raises(SettingsError, match="both set"):
        load_settings({"FLOWPLAN_ADMIN_TOKEN_FILE": str(token), "FLOWPLAN_ADMIN_TOKEN": "from-env"})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FLOWPLAN_HOST": "0.0.0.0"}, "FLOWPLAN_ADMIN_TOKEN"),
        ({"FLOWPLAN_HOST": "0.0.0.0", "FLOWPLAN_ADMIN_TOKEN": "real"}, "FLOWPLAN_INGEST_TOKEN"),
        ({"FLOWPLAN_ADMIN_TOKEN": ""}, "FLOWPLAN_ADMIN_TOKEN"),
    ],
)
def test_the_service_process_refuses_to_start_and_says_which_variable(env: dict[str, str], variable: str) -> None:
    """The check runs where every service starts (libs/service.py), before it connects to anything:
    the NATS URL here points nowhere, and the process still exits at once with the reason."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPLAN_")}
    result = subprocess.run(
        [sys.executable, "-m", "services.ingress"],
        env={**clean, "FLOWPLAN_NATS_URL": "nats://127.0.0.1:1", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and variable in result.stderr, result.stderr
