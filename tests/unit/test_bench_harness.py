"""The bench harness's own parts (not a benchmark): wrk's script and result line, the profile's
top items, the budget arithmetic, and one real wrk run against a local aiohttp server (seconds)."""

import asyncio
import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from bench import litellm as bench_litellm
from bench import profile as bench_profile
from bench import replay as bench_replay
from bench import wrk as bench_wrk
from libs.localservers import free_port
from proto.v1 import ReplayProgress

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 1 connections
{"requests": 500, "duration_us": 2000000, "bytes": 1000, "connect": 0, "read": 1, "write": 0, "status": 3, \
"timeout": 0, "p50_us": 180, "p90_us": 250, "p99_us": 900, "max_us": 1500, "mean_us": 200.5}
"""


def test_the_wrk_result_line_is_read_with_its_rate_and_errors() -> None:
    result = bench_wrk.parse(WRK_OUTPUT)
    assert result["rps"] == 250.0
    assert result["errors"] == 4  # read 1 + status 3
    assert (result["p50_us"], result["p99_us"]) == (180, 900)
    cell = bench_wrk.Cell(result, {"gateway": 0.1, "nats-server": 0.05}, warmup_ok=10)
    assert cell.ok == 500 - 3 + 10  # non-2xx are not admitted calls; the warm-up's are
    assert cell.per_call_us("gateway") == pytest.approx(200.0)
    assert cell.total_us() == pytest.approx(300.0)


def test_a_wrk_run_that_printed_no_result_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no result line"):
        bench_wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_carries_the_body_and_headers_as_they_are() -> None:
    body = json.dumps({"messages": [{"content": 'a ]] b ]=] c \\n "q"'}]}).encode()
    script = bench_wrk.script(body, {"Authorization": "Bearer sk-x"})
    literal = bench_wrk.lua_string(body.decode())
    assert literal.startswith("[==[") and literal.endswith("]==]")  # longer than any ]=*] inside
    assert f"wrk.body = {literal}" in script
    assert "wrk.headers[ [[Authorization]] ] = [[Bearer sk-x]]" in script
    assert "done = function(summary, latency, requests)" in script


def test_the_profile_counts_own_and_cumulative_time_per_function() -> None:
    collapsed = (
        "run (asyncio/base_events.py:600);handle (services/gateway/app.py:10);encode (msgspec.py:5) 6\n"
        "run (asyncio/base_events.py:600);handle (services/gateway/app.py:12) 3\n"
        "run (asyncio/base_events.py:601) 1\n"
    )
    total, own, cumulative = bench_profile.top_items(collapsed)
    assert total == 10
    assert own[0] == ("encode (msgspec.py)", 6)
    assert dict(own)["handle (services/gateway/app.py)"] == 3  # two lines of one function: one row
    assert dict(cumulative)["run (asyncio/base_events.py)"] == 10
    assert dict(cumulative)["handle (services/gateway/app.py)"] == 9


def test_calls_past_a_budget_are_those_its_amount_does_not_cover() -> None:
    costs = [Decimal("0.00042")] * 50
    assert bench_litellm.covered(costs, Decimal("0.005")) == 11
    outcome = bench_litellm.BudgetOutcome("x", "y", 50, 0, {"200": 50}, sum(costs, Decimal(0)), 11)
    assert outcome.past_budget == 39
    assert bench_litellm.covered([], Decimal("0.005")) == 0


def test_litellm_is_priced_like_the_catalog_and_pointed_at_the_upstream(tmp_path: Path) -> None:
    import yaml

    prices = bench_litellm.catalog_prices("deepseek/deepseek-chat")
    assert prices["deepseek/deepseek-chat"] == (Decimal("0.00000028"), Decimal("0.00000042"))
    peer = bench_litellm.LiteLLM(tmp_path, tmp_path / "state")
    plain = yaml.safe_load(peer.config("http://127.0.0.1:9", prices, None).read_text())
    budget = yaml.safe_load(peer.config("http://127.0.0.1:9", prices, Decimal("0.005")).read_text())
    params = plain["model_list"][0]["litellm_params"]
    assert params["api_base"] == "http://127.0.0.1:9/v1" and "max_budget" not in params
    assert budget["model_list"][0]["litellm_params"]["max_budget"] == 0.005
    assert plain["general_settings"]["master_key"] == peer.master_key


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
async def test_wrk_drives_a_local_server_and_counts_its_calls(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(await request.read())
        status = 200 if request.headers.get("Authorization") == "Bearer k" else 401
        return web.json_response({"ok": True}, status=status)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wrk = shutil.which("wrk") or ""
        good = await asyncio.to_thread(
            bench_wrk.run_wrk, wrk, url, b'{"model": "m"}', {"Authorization": "Bearer k"}, 2, 1
        )
        bad = await asyncio.to_thread(bench_wrk.run_wrk, wrk, url, b"{}", {"Authorization": "Bearer no"}, 1, 1)
    finally:
        await runner.cleanup()
    result, _ = good
    assert result["requests"] > 10 and result["errors"] == 0 and result["p50_us"] > 0
    assert seen[0] == b'{"model": "m"}'
    assert bad[0]["status"] == bad[0]["requests"] > 0  # every 401 counted as an error


def test_wrk_is_not_installed_by_a_user_who_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    with pytest.raises(SystemExit, match="apt-get install wrk"):
        bench_wrk.ensure_wrk()
    assert calls == []


def test_the_suspects_are_found_by_frame_and_by_the_sampled_line() -> None:
    protocols = Path(bench_profile.ROOT / "services/gateway/protocols.py").read_text().splitlines()
    line = next(i for i, text in enumerate(protocols, 1) if "_encode.encode(" in text)
    pipeline = Path(bench_profile.ROOT / "services/gateway/pipeline.py").read_text().splitlines()
    admit = next(i for i, text in enumerate(pipeline, 1) if "async def admit(" in text) + 5
    root = "run (asyncio/runners.py:118);CallPipeline.handle (services/gateway/pipeline.py:1)"
    collapsed = (
        f"{root};Exchange.upstream_request (services/gateway/protocols.py:{line}) 2\n"  # the body re-encoded
        f"{root};Counter.add (opentelemetry/sdk/metrics/_internal/instrument.py:40) 1\n"
        f"{root};Counter.add (libs/observability.py:61) 2\n"  # flowplan's own counter since issue 14
        f"{root};create_task (asyncio/tasks.py:370) 1\n"
        f"{root};CallPipeline.admit (services/gateway/pipeline.py:{admit});Client.request (nats/aio/client.py:9) 10\n"
    )
    shares = dict(bench_profile.candidates(collapsed))
    assert shares["JSON encode/decode on flowplan's own lines (msgspec; body re-encoding)"] == 2 / 16
    assert shares["metric instruments (OTel add/record, attribute hashing; libs/observability.py)"] == 3 / 16
    assert shares["asyncio task creation"] == 1 / 16
    assert shares["admission (quota.check and its reply)"] == 10 / 16
    assert shares["nats-py request/reply (quota.check, key.lookup)"] == 10 / 16
    assert shares["the upstream call (aiohttp client)"] == 0.0


def test_a_bench_run_s_folder_is_removed_unless_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run leaves gigabytes (a durable Postgres, a JetStream store): removed afterwards, kept when asked."""
    from bench import work_dir

    monkeypatch.delenv("FLOWPLAN_BENCH_KEEP", raising=False)
    with work_dir() as work:
        (work / "data").write_text("x")
    assert not work.exists()
    monkeypatch.setenv("FLOWPLAN_BENCH_KEEP", "1")
    with work_dir() as kept:
        pass
    assert kept.exists()
    kept.rmdir()


def test_a_replay_that_failed_is_rated_over_the_time_it_ran_and_not_called_different() -> None:
    """The replay bench printed quota's failed rebuild as 170,000,000,000,000 events/s (read over a
    rebuild time of 0: it never ended) and 'DIFFERENT (0 tables)' (it never verified)."""
    failed = ReplayProgress(projection="quota", phase="failed", read=170_000, seconds=20.0, error="RuntimeError: x")
    assert bench_replay.rate(failed) == 8_500 and bench_replay.verdict(failed) == "not verified"
    done = ReplayProgress(projection="keys", phase="done", read=300_000, seconds=12.0, rebuild_seconds=10.0,
                          verified=True)  # fmt: skip
    assert bench_replay.rate(done) == 30_000 and bench_replay.verdict(done) == "identical"
