"""LiteLLM's proxy beside flowplan's gateway (`python -m bench --peer litellm`, `make bench PEER=litellm`).

LiteLLM (`litellm[proxy]`, pinned below) is installed into a virtual environment of its own under
.flowplan/ and runs in front of the same unpaced simulator as the gateway, one worker, a master key
and no database, with the same model, request body and load generator (wrk) as the gateway.

The budget test both products claim: a $0.005 budget under a burst of 50 concurrent calls, each
costing about $0.00042 at the catalog's prices (so about 11 fit): how many calls each lets through
past the budget. flowplan: a PAYG key on an account whose balance is $0.005. LiteLLM: a key with
`max_budget` needs its database, and its database needs Prisma's query engine, which Prisma
downloads from its own site at start (not from a package registry): that cannot work on this
machine, so LiteLLM's side uses the budget it enforces without a database, a model (deployment)
budget, `litellm_params.max_budget` with `budget_duration`, tracked in the proxy's memory; the
report says which budget was used.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from nats.aio.client import Client

from libs.localservers import free_port, stop_process, wait_for_port
from libs.pricing.catalog import load_catalog

VERSION = "1.108.7"
"""litellm[proxy] 1.110.x needs litellm-proxy of the same version, which the registry does not have."""
MASTER_KEY = "sk-bench-master-0123456789"
BUDGET_USD = Decimal("0.005")
BURST = 50
BURST_TOKENS = 1000


def catalog_prices(*models: str) -> dict[str, tuple[Decimal, Decimal]]:
    """(prompt, completion) USD per token of each model, from flowplan's catalog: LiteLLM prices the same."""
    catalog = load_catalog()
    return {
        m: (Decimal(catalog.models[m].pricing.prompt), Decimal(catalog.models[m].pricing.completion)) for m in models
    }


class LiteLLM:
    """LiteLLM's proxy as a child process, installed on first use into `<state>/litellm`."""

    def __init__(self, work: Path, state: Path) -> None:
        self.work, self.venv = work, state / "litellm"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.master_key = MASTER_KEY
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def binary(self) -> Path:
        return self.venv / "bin" / "litellm"

    def install(self) -> None:
        stamp = self.venv / f".installed-{VERSION}"
        if stamp.exists():
            return
        print(f"installing litellm[proxy]=={VERSION} into {self.venv} (once) ...", flush=True)
        if not (self.venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        pip = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, f"litellm[proxy]=={VERSION}"], check=True)
        stamp.touch()

    def config(self, upstream: str, prices: dict[str, tuple[Decimal, Decimal]], budget: Decimal | None) -> Path:
        models = []
        for name, (prompt, completion) in prices.items():
            params: dict[str, Any] = {"model": f"openai/{name}", "api_base": f"{upstream}/v1", "api_key": "bench"}
            if budget is not None:  # a model (deployment) budget: the budget LiteLLM keeps without a database
                params |= {"max_budget": float(budget), "budget_duration": "1d"}
            models.append({
                "model_name": name,
                "litellm_params": params,
                "model_info": {"input_cost_per_token": float(prompt), "output_cost_per_token": float(completion)},
            })  # fmt: skip
        config = {"model_list": models, "general_settings": {"master_key": self.master_key}}
        if budget is None:  # as fast as it goes: no per-call logging beyond its defaults
            config["litellm_settings"] = {"drop_params": True}
        path = self.work / f"litellm-{'budget' if budget is not None else 'plain'}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, upstream: str, prices: dict[str, tuple[Decimal, Decimal]], budget: Decimal | None = None) -> None:
        config = self.config(upstream, prices, budget)
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # its price list from the package, not from the internet
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
        }
        env.pop("DATABASE_URL", None)
        log = open(self.work / "litellm.log", "ab")
        command = [str(self.binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen([*command, "--num_workers", "1"], env=env, stdout=log, stderr=log,
                                        cwd=self.work, start_new_session=True)  # fmt: skip
        wait_for_port(self.port, timeout=120, process=self.process)

    def pids(self) -> list[int]:
        from bench.gateway import process_tree

        return process_tree(self.process.pid) if self.process is not None else []

    def stop(self) -> None:
        if self.process is not None:
            for pid in reversed(self.pids()):  # uvicorn may have started a worker of its own
                if pid != self.process.pid:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            stop_process(self.process)
            self.process = None


@dataclass
class BudgetOutcome:
    product: str
    how: str
    admitted: int
    refused: int
    statuses: dict[str, int]
    spent_usd: Decimal
    within_budget: int
    """How many of the admitted calls the budget covers (their costs, in the order they finished)."""
    note: str = ""

    @property
    def past_budget(self) -> int:
        return self.admitted - self.within_budget


def burst_body() -> bytes:
    from bench.gateway import BUDGET_MODEL

    content = f"hello there [[tokens:{BURST_TOKENS}]]"
    return json.dumps({"model": BUDGET_MODEL, "max_tokens": BURST_TOKENS,
                       "messages": [{"role": "user", "content": content}]}).encode()  # fmt: skip


async def burst(url: str, key: str, price: tuple[Decimal, Decimal]) -> tuple[int, dict[str, int], list[Decimal]]:
    """BURST calls at once; the 200s' costs (from their usage blocks, at the catalog's prices)."""
    statuses: dict[str, int] = {}
    reasons: dict[str, str] = {}
    costs: list[Decimal] = []
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    body = burst_body()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                reply = await response.read()
                status = str(response.status)
                if response.status != 200 and status not in statuses:  # the first refusal of each kind, named
                    reasons[status] = _reason(reply)
                statuses[status] = statuses.get(status, 0) + 1
                if response.status == 200:
                    usage = json.loads(reply)["usage"]
                    costs.append(usage["prompt_tokens"] * price[0] + usage["completion_tokens"] * price[1])

        await asyncio.gather(*(one() for _ in range(BURST)))
    named = {f"{status} {reasons[status]}" if status in reasons else status: n for status, n in statuses.items()}
    return len(costs), named, costs


def _reason(reply: bytes) -> str:
    """The error's code (OpenAI's error.code or type), for the report."""
    try:
        error = json.loads(reply).get("error", {})
    except (ValueError, AttributeError):
        return ""
    return str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""


def covered(costs: list[Decimal], budget: Decimal) -> int:
    spent, n = Decimal(0), 0
    for cost in costs:
        if spent + cost > budget:
            break
        spent, n = spent + cost, n + 1
    return n


async def flowplan_budget(stack: Any, price: tuple[Decimal, Decimal]) -> BudgetOutcome:
    """A new account with a PAYG key and a $0.005 balance; the burst through the gateway."""
    ingress = f"http://127.0.0.1:{stack.settings.ingress_port}"
    async with aiohttp.ClientSession() as session:
        account = await stack.admin(session, "/admin/v1/accounts", {"name": "bench-budget"})
        headers = {"Authorization": f"Bearer {account['management_key']}"}
        async with session.post(f"{ingress}/v1/keys", json={"name": "budget", "kind": "payg"}, headers=headers) as r:
            assert r.status == 201, await r.text()
            payg_key = (await r.json())["key"]
        top_up = {"amount_usd": str(BUDGET_USD), "topup_ref": f"bench-budget-{uuid.uuid4().hex}"}
        await stack.admin(session, f"/admin/v1/accounts/{account['account_id']}/balance", top_up)
        deadline = time.monotonic() + 30
        while True:  # the gateway admits PAYG calls once quota has the balance
            async with session.get(f"{ingress}/v1/account/usage", headers={"Authorization": f"Bearer {payg_key}"}) as r:
                balance = (await r.json())["extra_usage"]["balance_usd"] if r.status == 200 else "0"
            if Decimal(balance) >= BUDGET_USD or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        # The gateway learns the new key once (GET /v1/models, not billed): a burst on a key it has
        # never seen is mostly refused as too many unknown keys (429), which is not the budget at work.
        models = stack.urls["gateway"].replace("/v1/chat/completions", "/v1/models")
        async with session.get(models, headers={"Authorization": f"Bearer {payg_key}"}) as r:
            assert r.status == 200, await r.text()
    admitted, statuses, costs = await burst(stack.urls["gateway"], payg_key, price)
    return BudgetOutcome("flowplan", f"PAYG balance ${BUDGET_USD}", admitted, BURST - admitted, statuses,
                         sum(costs, Decimal(0)), covered(costs, BUDGET_USD))  # fmt: skip


async def litellm_budget(peer: LiteLLM, upstream: str, model: str, price: tuple[Decimal, Decimal]) -> BudgetOutcome:
    """A second LiteLLM process whose model has a $0.005 budget (its throughput process has none); the burst."""
    peer.start(upstream, {model: price}, budget=BUDGET_USD)
    try:
        admitted, statuses, costs = await burst(peer.url + "/v1/chat/completions", peer.master_key, price)
        await asyncio.sleep(1)  # its spend is counted after the calls: a second burst shows it took effect
        again, _, _ = await burst(peer.url + "/v1/chat/completions", peer.master_key, price)
    finally:
        peer.stop()
    how = f"model budget max_budget ${BUDGET_USD}/1d, in memory (a key's max_budget needs its Prisma database)"
    note = f"a second burst a second later: {again} admitted"
    return BudgetOutcome("LiteLLM " + VERSION, how, admitted, BURST - admitted, statuses, sum(costs, Decimal(0)),
                         covered(costs, BUDGET_USD), note)  # fmt: skip


async def budget_test(stack: Any, peer: LiteLLM, nc: Client, model: str) -> list[BudgetOutcome]:
    del nc
    price = catalog_prices(model)[model]
    ours = await flowplan_budget(stack, price)
    peer.stop()  # the throughput process; the budget test starts its own
    theirs = await litellm_budget(peer, stack.simulator_url, model, price)
    return [ours, theirs]


def report_budget(outcomes: list[BudgetOutcome]) -> None:
    print(f"\nbudget test: a ${BUDGET_USD} budget, a burst of {BURST} concurrent calls of {BURST_TOKENS} output "
          "tokens each (costs from their usage at the catalog's prices)")  # fmt: skip
    for o in outcomes:
        print(f"  {o.product:<16} {o.how}: {o.admitted} admitted, {o.refused} refused {o.statuses}; spent "
              f"${o.spent_usd:.6f} = {o.spent_usd / BUDGET_USD:.1f}x the budget; the budget covers {o.within_budget}, "
              f"so {o.past_budget} calls went through past it{'; ' + o.note if o.note else ''}")  # fmt: skip
