"""The real Claude Code CLI (`@anthropic-ai/claude-code` from the npm registry, `claude -p` with
ANTHROPIC_BASE_URL and a flowplan key) on a model whose upstream speaks only chat completions:
its messages calls are translated, it completes a prompt and a tool call round trip, and every
call it made is metered exactly once with its tokens."""

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import FREE_MODEL, metered
from tests.stack import Stack

pytestmark = pytest.mark.connected
CLAUDE_CODE_VERSION = "2.1.332"


@pytest.fixture(scope="module")
def claude_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI, installed from the npm registry into a folder of this test run (its install script
    only copies the native binary out of the registry's platform package, nothing is downloaded)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    folder = tmp_path_factory.mktemp("claude-code-cli")
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder),
         f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"@anthropic-ai/claude-code did not install from the npm registry: {done.stderr[-500:]}")
    return folder / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="module")
async def chat_only(stack: Stack) -> AsyncIterator[Stack]:
    """The stack's gateway, restarted with the non-Anthropic vendors' upstream speaking only chat."""
    simulator = f"http://127.0.0.1:{stack.settings.simulator_port}"
    upstreams = {"default": {"url": simulator, "protocols": ["chat"]},
                 "anthropic": {"url": simulator, "protocols": ["messages"]}}  # fmt: skip
    stack.gateway.stop()
    stack.gateway.start({"FLOWPLAN_UPSTREAMS": json.dumps(upstreams)})
    yield stack
    stack.gateway.stop()
    stack.gateway.start()


def run_claude(claude: Path, home: Path, gateway_url: str, key: str, prompt: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": gateway_url, "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
        "ANTHROPIC_SMALL_FAST_MODEL": FREE_MODEL, "ANTHROPIC_DEFAULT_HAIKU_MODEL": FREE_MODEL,
    }  # fmt: skip
    return subprocess.run(
        [str(claude), "-p", prompt, "--model", FREE_MODEL, "--max-turns", "4", "--allowedTools", "Bash(echo:*)"],
        capture_output=True, text=True, timeout=180, env=env, cwd=home,
    )  # fmt: skip


async def test_claude_code_completes_a_prompt_on_a_chat_model(
    chat_only: Stack, claude_code: Path, tmp_path: Path
) -> None:
    account = await chat_only.create_account()
    done = await asyncio.to_thread(
        run_claude, claude_code, tmp_path / "home", chat_only.gateway_url, account["key"], "Say hello in a few words."
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.stdout.strip()
    events = await metered(chat_only, account["key"], 1)
    assert all(e["model"] == FREE_MODEL and e["output_tokens"] > 0 for e in events)


async def test_claude_code_tool_call_round_trip_on_a_chat_model(
    chat_only: Stack, claude_code: Path, tmp_path: Path
) -> None:
    """The simulator calls the tool the prompt names (services/simulator/tools.py): Claude Code runs
    Bash, sends the tool_result back (translated to a chat tool message), the model's text ends the turn."""
    account = await chat_only.create_account()
    prompt = 'Use Bash to print a word [[args:{"command": "echo flowplan-ok", "description": "Print a word"}]]'
    done = await asyncio.to_thread(
        run_claude, claude_code, tmp_path / "home", chat_only.gateway_url, account["key"], prompt
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    events = await metered(chat_only, account["key"], 2)
    assert len(events) >= 2 and all(e["model"] == FREE_MODEL and e["output_tokens"] > 0 for e in events)
    log = chat_only.gateway.log()
    assert "upstream answered" not in log[-20000:]
