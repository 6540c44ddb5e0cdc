"""`flowplan replay`: every projection rebuilt from the log equals the live one, is swapped in
while reads go on, and the services go on from the new tables without counting anything twice.
A projection corrupted by hand is reported table by table and repaired only when asked."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from libs.eventlog.subjects import partition_for
from tests.e2e.conftest import HI, oai, payg_key, refund_of, top_up
from tests.stack import Stack, eventually, flowplan_replay, usage_event

pytestmark = pytest.mark.connected
PROJECTIONS = ("billing", "ingress", "keys", "quota", "refund")


async def settled(stack: Stack) -> bool:
    """Every live projection has applied everything in the log."""
    nc = await stack.nats()
    try:
        consumers = await nc.jetstream().consumers_info(stack.settings.stream)
        live = [c for c in consumers if not c.name.startswith("replay-")]
        return bool(live) and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in live)
    finally:
        await nc.close()


async def mixed_load(stack: Stack) -> dict[str, Any]:
    """Accounts (one suspended), payments with a downgrade, keys created, rotated and revoked, a multiplier and a
    Flow-rate change, PAYG top-ups and calls through the gateway, usage with duplicates and late
    events that open windows before later ones, and a refund."""
    admin, now = stack.settings.admin_token, datetime.now(UTC)
    alice = await stack.create_account("alice")
    bob = await stack.create_account("bob", multiplier="5/4")
    await stack.pay(alice["account_id"], "pro", "20.00")
    await stack.pay(alice["account_id"], "max", "100.00")
    await stack.pay(alice["account_id"], "pro", "20.00")  # a downgrade, at the end of the paid month
    await stack.pay(bob["account_id"], "pro", "20.00", paid_at=(now - timedelta(days=3)).isoformat())
    laptop_key = {"name": "laptop", "kind": "subscription"}
    status, laptop = await stack.http("POST", "/v1/keys", token=alice["management_key"], json=laptop_key)
    assert status == 201
    status, _ = await stack.http("POST", f"/v1/keys/{laptop['id']}/rotate", token=alice["management_key"])
    assert status == 201
    status, _ = await stack.http("DELETE", f"/v1/keys/{laptop['id']}", token=alice["management_key"])
    assert status == 200
    multiplier = f"/admin/v1/accounts/{bob['account_id']}/multiplier"
    status, _ = await stack.http("PUT", multiplier, token=admin, json={"multiplier": "1"})
    assert status == 200
    payg = await payg_key(stack, bob)
    await top_up(stack, bob["account_id"], "5.00")
    extra_usage = {"enabled": True, "payg_key_id": payg["id"]}
    status, _ = await stack.http("PUT", "/v1/account/extra-usage", token=bob["management_key"], json=extra_usage)
    assert status == 200
    for key in (payg["key"], bob["key"], alice["key"]):
        await oai(stack, key).chat.completions.create(**HI)
    events = [
        usage_event(alice["account_id"], key_id=alice["key_id"], occurred_at=(now - timedelta(hours=h)).isoformat())
        for h in (0, 2, 9, 30, 80)
    ] + [
        usage_event(bob["account_id"], occurred_at=(now - timedelta(hours=h)).isoformat(), billing_mode=mode)
        for h, mode in ((1, "subscription"), (4, "payg"), (50, "subscription"))
    ]
    assert (await stack.post_usage(events))[1] == {"accepted": 8, "duplicates": 0}
    assert (await stack.post_usage(events[:3]))[1] == {"accepted": 0, "duplicates": 3}
    late = [usage_event(alice["account_id"], occurred_at=(now - timedelta(hours=h)).isoformat()) for h in (6, 150)]
    assert (await stack.post_usage(late))[0] == 202  # windows before later ones: the chains are recomputed
    carol = await stack.create_account("carol")
    await stack.pay(carol["account_id"], "pro", "20.00")
    assert (await stack.post_usage([usage_event(carol["account_id"])]))[0] == 202
    status, refund = await stack.http("POST", "/v1/refunds", token=carol["management_key"])
    assert status == 202, refund
    assert (await refund_of(stack, carol["key"], refund["refund_id"]))["status"] == "succeeded"
    status, _ = await stack.http("POST", "/admin/v1/flow-rate", token=admin, json={"usd_per_flow": "1/40"})
    assert status == 200
    dave = await stack.create_account("dave")  # suspended, let back, suspended again
    for action in ("suspend", "unsuspend", "suspend"):
        status, _ = await stack.http("POST", f"/admin/v1/accounts/{dave['account_id']}/{action}", token=admin)
        assert status == 200
    await eventually(lambda: settled(stack))
    return {"alice": alice, "bob": bob, "carol": carol, "dave": dave, "revoked": laptop, "refund": refund}


async def counted(stack: Stack) -> dict[str, float]:
    """What quota's and billing's /metrics have counted of the business (Flows, payments)."""
    totals = {}
    async with aiohttp.ClientSession() as session:
        for port, metric in ((stack.settings.quota_port, "flowplan_flows_consumed_total"),
                             (stack.settings.billing_port, "flowplan_payments_total")):  # fmt: skip
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                lines = (await response.text()).splitlines()
            totals[metric] = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.split("{")[0] == metric)
    return totals


async def read_views(stack: Stack, key: str) -> dict[str, Any]:
    views = {}
    for path in ("/v1/account/usage", "/v1/account/usage/events?limit=100", "/v1/billing/history", "/v1/keys",
                 "/v1/refunds"):  # fmt: skip
        status, body = await stack.http("GET", path, token=key)
        assert status == 200, (path, body)
        views[path] = body
    for window in ("window_5h", "weekly", "monthly"):  # what moves with the clock only
        views["/v1/account/usage"][window].pop("resets_at", None)
    return views


async def test_replay_all_is_identical_swaps_while_reads_go_on_and_counts_nothing_twice(stack: Stack) -> None:
    load = await mixed_load(stack)
    alice = load["alice"]
    accounts = ("alice", "bob", "carol")
    before = {name: await read_views(stack, load[name]["key"]) for name in accounts}
    metered = await counted(stack)
    assert all(metered.values()), metered
    reads, failures = 0, []
    replaying = True

    async def keep_reading() -> None:
        nonlocal reads
        while replaying:
            for name in accounts:
                try:
                    await read_views(stack, load[name]["key"])
                    reads += 1
                except AssertionError as exc:
                    failures.append(exc)

    reader = asyncio.create_task(keep_reading())
    code, out = await flowplan_replay(stack, "--projection", "all", "--verify")
    replaying = False
    await reader
    assert code == 0, out
    for name in PROJECTIONS:
        [line] = [line for line in out.splitlines() if line.startswith(f"{name}: ")]
        assert "identical; swapped" in line, out
    assert failures == [] and reads > 0

    assert {name: await read_views(stack, load[name]["key"]) for name in accounts} == before
    assert await counted(stack) == metered  # a rebuild counts nothing on /metrics again
    conn = await stack.db()
    try:
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        assert not any(s.endswith("_rebuild") or "_old_" in s for s in schemas)
    finally:
        await conn.close()

    # The services go on from the new tables' checkpoints: new usage counts, and counts once.
    used = before["alice"]["/v1/account/usage"]["window_5h"]["used_flows"]
    assert (await stack.post_usage([usage_event(alice["account_id"], key_id=alice["key_id"])]))[0] == 202
    await oai(stack, alice["key"]).chat.completions.create(**HI)
    await eventually(lambda: settled(stack))
    _, events = await stack.http("GET", "/v1/account/usage/events?limit=2", token=alice["key"])
    expected = round(used + sum(e["flows"] for e in events["data"]), 6)
    assert (await stack.usage(alice["key"]))["window_5h"]["used_flows"] == expected
    status, _ = await stack.http("GET", "/v1/account/usage", token=load["revoked"]["key"])
    assert status == 401  # keys' memory, reloaded from the new table, still knows the revocation
    status, body = await stack.http("GET", "/v1/account/usage", token=load["dave"]["key"])
    assert status == 403 and body["error"]["code"] == "account_suspended"  # ... and the suspension
    upgrade = await stack.pay(load["bob"]["account_id"], "max", "100.00")  # billing decides it from its swapped tables
    assert upgrade["previous_plan"] == "pro" and (await stack.usage(load["bob"]["key"]))["plan"] == "max"


async def test_a_corrupted_projection_is_reported_and_repaired_only_when_asked(stack: Stack) -> None:
    account = await stack.create_account("carol")
    assert (await stack.post_usage([usage_event(account["account_id"])]))[0] == 202
    await eventually(lambda: settled(stack))
    good = (await stack.usage(account["key"]))["window_5h"]["used_flows"]
    conn = await stack.db()
    try:
        await conn.execute(
            "UPDATE quota.windows SET flows_micros = flows_micros + 7000000 WHERE account_id = $1 AND kind = '5h'",
            account["account_id"],
        )
        stack.quota.stop()  # quota loads its memory from the corrupted table
        await asyncio.to_thread(stack.quota.start)
        assert (await stack.usage(account["key"]))["window_5h"]["used_flows"] == good + 7

        code, out = await flowplan_replay(stack, "--projection", "quota", "--verify")
        assert code == 3, out
        assert "quota: " in out and "DIFFERENT; NOT swapped" in out
        assert "table windows: live" in out and f"account_id={account['account_id']}, kind=5h" in out
        assert "table usage" not in out  # only what differs is listed
        assert (await stack.usage(account["key"]))["window_5h"]["used_flows"] == good + 7

        swap_anyway = ("--swap-if-different", "--keep-old")
        code, out = await flowplan_replay(stack, "--projection", "quota", "--verify", *swap_anyway)
        assert code == 0, out
        assert "DIFFERENT; swapped" in out and "old tables kept in schema quota_old_" in out
        assert (await stack.usage(account["key"]))["window_5h"]["used_flows"] == good  # memory reloaded too
        kept = out.split("old tables kept in schema ")[1].split()[0]
        corrupted = await conn.fetchval(
            f"SELECT flows_micros FROM {kept}.windows WHERE account_id = $1 AND kind = '5h'", account["account_id"]
        )
        assert corrupted == good * 1_000_000 + 7_000_000
        await conn.execute(f"DROP SCHEMA {kept} CASCADE")
    finally:
        await conn.close()


async def table_shapes(stack: Stack, schema: str) -> list[tuple[str, ...]]:
    """Each table of the schema: whether it is logged, its constraints and its indexes."""
    conn = await stack.db()
    try:
        rows = await conn.fetch(
            """SELECT c.relname, c.relpersistence::text, 'constraint', k.conname, pg_get_constraintdef(k.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_constraint k ON k.conrelid = c.oid
               WHERE n.nspname = $1 AND c.relkind = 'r'
               UNION ALL
               SELECT c.relname, c.relpersistence::text, 'index', i.relname, pg_get_indexdef(i.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_index x ON x.indrelid = c.oid
               JOIN pg_class i ON i.oid = x.indexrelid
               WHERE n.nspname = $1 AND c.relkind = 'r'
               ORDER BY 1, 3, 4""",
            schema,
        )
    finally:
        await conn.close()
    return [tuple(row.values()) for row in rows]


async def test_the_swapped_tables_carry_the_live_constraints_and_indexes(stack: Stack) -> None:
    """A rebuild's copies are made by hand from the catalogue (libs/replay/tables.py): after the swap,
    the next migration and every read expect the live tables' keys, foreign keys and indexes."""
    account = await stack.create_account("erin")
    assert (await stack.post_usage([usage_event(account["account_id"])]))[0] == 202
    await eventually(lambda: settled(stack))
    before = await table_shapes(stack, "quota")  # quota's tables reference one another
    assert before and all(shape[1] == "p" for shape in before)
    code, out = await flowplan_replay(stack, "--projection", "quota", "--verify")
    assert code == 0 and "identical; swapped" in out, out
    assert await table_shapes(stack, "quota") == before


async def test_a_projection_nobody_owns_is_a_clear_error(stack: Stack) -> None:
    code, out = await flowplan_replay(stack, "--projection", "quotas")
    assert code == 1 and "error: no service answers for projection 'quotas'" in out
    code, out = await flowplan_replay(stack, "--projection", "quota", "--from-seq", "0")
    assert code == 2 and "--from-seq" in out


async def test_a_replay_whose_reading_fails_is_reported_failed_and_quota_goes_on(stack: Stack) -> None:
    """A rebuild's read of the log can fail (nats-server cut the process's connection as a slow
    consumer under the replay bench's load: its pull request went with it). The replay fails and
    says why; the service that ran it goes on answering. The reader's close raised the failure a
    second time, out of the replay's clean-up, and the quota process exited (a task that dies takes
    its process with it), refusing every call until restarted."""
    account = await stack.create_account("reader")
    while partition_for(account["account_id"], stack.settings.partitions) != 0:  # the reader the failpoint fails
        account = await stack.create_account("reader")
    assert (await stack.post_usage([usage_event(account["account_id"])]))[0] == 202
    stack.quota.stop()
    stack.quota.start({"FLOWPLAN_FAILPOINT": "replay_read_lost"})
    try:
        code, out = await flowplan_replay(stack, "--projection", "quota")
        assert code != 0 and "the log stopped answering a read" in out, out
        assert stack.quota.process is not None and stack.quota.process.poll() is None, stack.quota.log()[-3000:]
        assert "failpoint replay_read_lost: fired" in stack.quota.log()
        status, usage = await stack.http("GET", "/v1/account/usage", token=account["management_key"])
        assert status == 200 and float(usage["window_5h"]["used_flows"]) > 0, usage  # quota still answers
    finally:
        stack.quota.stop()
        stack.quota.start()
