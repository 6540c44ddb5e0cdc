"""`make run`'s banner: its change examples use the demo account's management key, its read and model
examples the model key (a model key would get 403 insufficient_scope on a change)."""

from libs.devstack import _banner
from libs.settings import load_settings


def test_changes_in_the_banner_use_the_management_key() -> None:
    account = {"account_id": "acc_demo", "key": "sk-ss-v1-MODEL", "management_key": "sk-mg-v1-MANAGE"}
    text = _banner(load_settings({}), account)
    changes = [line for line in text.splitlines() if "curl" in line and ("-X POST" in line or " -d " in line)]
    account_changes = [line for line in changes if "/v1/usage" not in line and "/v1/chat" not in line]
    assert account_changes and all("sk-mg-v1-MANAGE" in line for line in account_changes)
    reads = [line for line in text.splitlines() if "curl -s" in line and "-X" not in line and " -d " not in line]
    assert any("/v1/account/usage" in line and "sk-ss-v1-MODEL" in line for line in reads)
    assert "OpenAI(" in text and 'api_key="sk-ss-v1-MODEL"' in text


def test_the_banner_gives_the_console_and_the_demo_owners_sign_in_link() -> None:
    account = {"account_id": "acc_demo", "key": "sk-ss-v1-MODEL", "management_key": "sk-mg-v1-MANAGE",
               "sign_in_url": "http://127.0.0.1:8088/sign-in/link/SECRET", "email": "demo@flowplan.local"}  # fmt: skip
    text = _banner(load_settings({}), account)
    assert "console http://127.0.0.1:8088" in text
    assert "http://127.0.0.1:8088/sign-in/link/SECRET" in text and "demo@flowplan.local" in text
    without = _banner(load_settings({}), {**account, "sign_in_url": ""})
    assert "the console did not answer" in without
