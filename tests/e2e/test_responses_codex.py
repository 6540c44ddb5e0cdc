"""The real Codex CLI (`@openai/codex` from the npm registry) against the gateway's Responses API:
`codex exec` with a model provider pointing at the gateway (`wire_api = "responses"`) completes
a prompt, and every call it made is metered exactly once with its tokens: on a deepseek model
(its upstream speaks chat: translated) and on an OpenAI one (its upstream speaks Responses:
passed through as Codex sent it)."""

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import FREE_MODEL, metered, pro_account
from tests.stack import Stack

pytestmark = pytest.mark.connected
CODEX_VERSION = "0.171.0"
CODEX_MODEL = "openai/gpt-5.2-codex"


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI, installed from the npm registry into a folder of this test run."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    folder = tmp_path_factory.mktemp("codex-cli")
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), f"@openai/codex@{CODEX_VERSION}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"@openai/codex did not install from the npm registry: {done.stderr[-500:]}")
    return folder / "node_modules" / ".bin" / "codex"


def run_codex(
    codex: Path, home: Path, gateway_url: str, key: str, prompt: str, model: str = FREE_MODEL
) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "flowplan"\n'
        "[model_providers.flowplan]\n"
        'name = "flowplan"\n'
        f'base_url = "{gateway_url}/v1"\n'
        'env_key = "FLOWPLAN_TEST_KEY"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home), "FLOWPLAN_TEST_KEY": key}
    return subprocess.run(
        [str(codex), "exec", "--skip-git-repo-check", "--sandbox", "read-only", prompt],
        capture_output=True, text=True, timeout=180, env=env, cwd=home,
    )  # fmt: skip


async def test_codex_exec_completes_a_prompt_metered_once_per_call(stack: Stack, codex: Path, tmp_path: Path) -> None:
    account = await stack.create_account()
    done = await asyncio.to_thread(
        run_codex, codex, tmp_path / "home", stack.gateway_url, account["key"], "Say hello in a few words."
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    events = await metered(stack, account["key"], 1)
    assert events and all(e["model"] == FREE_MODEL and e["output_tokens"] > 0 for e in events)
    assert all(e["input_tokens"] + e["cached_tokens"] > 0 for e in events)
    assert done.stdout.strip()  # what the model answered


async def test_codex_exec_tool_call_round_trip(stack: Stack, codex: Path, tmp_path: Path) -> None:
    """The simulator calls the tool the prompt names (services/simulator/tools.py): Codex runs it,
    sends its output back as a function_call_output item, and the model's text ends the turn."""
    account = await stack.create_account()
    prompt = 'Use exec_command to print a word [[args:{"cmd": "echo flowplan-ok"}]]'
    done = await asyncio.to_thread(run_codex, codex, tmp_path / "home", stack.gateway_url, account["key"], prompt)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "echo flowplan-ok" in done.stderr  # Codex shows the command it ran
    events = await metered(stack, account["key"], 2)
    assert len(events) == 2  # the call that asked for the tool, the one that answered after it
    assert all(e["output_tokens"] > 0 for e in events)


async def test_codex_on_an_openai_model_is_passed_through_tool_call_and_all(
    stack: Stack, codex: Path, tmp_path: Path
) -> None:
    """The upstream (the simulator as OpenAI) speaks Responses: Codex's own requests go to it as
    they are, and each call is metered from the usage of its `response.completed`."""
    account = await pro_account(stack)
    prompt = 'Use exec_command to print a word [[args:{"cmd": "echo flowplan-native"}]]'
    done = await asyncio.to_thread(
        run_codex, codex, tmp_path / "home", stack.gateway_url, account["key"], prompt, CODEX_MODEL
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert "echo flowplan-native" in done.stderr
    events = await metered(stack, account["key"], 2)
    assert len(events) == 2 and all(e["model"] == CODEX_MODEL and e["output_tokens"] > 0 for e in events)
    assert all(e["input_tokens"] + e["cached_tokens"] > 0 for e in events)
