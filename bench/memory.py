"""Memory part of `python -m bench` (`--part memory`): what quota, keys and the gateway hold in memory
at scale, and how long quota takes to load its state at start.

  * quota: --memory-accounts accounts (100,000 and 1,000,000 by default) that all have open 5-hour,
    weekly and monthly windows, generated straight into quota's tables (accounts, plan_history,
    windows, ledger: what quota reads at start, `QuotaState.load`; the log is not read at start, the
    projection resumes from its checkpoints). A fresh Python process then loads them as the service
    does at start: the seconds it takes, the resident memory it adds (RSS after the load, less RSS
    before it) per account, and the peak while loading; and a take-over's load of one partition's
    accounts (services/quota/partitions.py), which reads that partition's rows only.
  * keys: --memory-keys keys (1,000,000) in keys.keys, loaded by `KeyRegistry.load` in a fresh process.
  * gateway: its key cache (libs/keycache.py, an LRU) filled with as many entries as key.lookup
    answers give it: the cost per cached key.

Each measurement runs in a child process of its own (`python -m bench.memory --child ...`), so that
one's memory does not count in another's. `--trace` adds tracemalloc's top allocation sites (slow).
"""

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from libs.db import ensure_database, migrate_async
from libs.eventlog.subjects import partition_for
from libs.settings import DEFAULT_PARTITIONS
from libs.setup import migration_dirs

KIB = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-accounts", default="100000,1000000", help="memory: quota's account counts")
    parser.add_argument("--memory-keys", type=int, default=1_000_000, help="memory: keys (keys service, gateway)")
    parser.add_argument("--trace", action="store_true", help="memory: tracemalloc's top sites (slow)")


def rss_kib() -> tuple[int, int]:
    """(resident now, peak resident) of this process, in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def generate_quota(url: str, n: int, now: datetime) -> None:
    """n accounts, each with open windows: created 20 days ago on Free, every third on Pro since 10 days
    ago (its own anchor), every tenth with a PAYG top-up; a 5-hour window opened an hour ago, a weekly
    one two days ago and this month's total."""
    conn = await asyncpg.connect(url)
    try:
        accounts, plans, windows, ledger = [], [], [], []
        for i in range(n):
            account = f"acc_{uuid.UUID(int=i).hex[-24:]}"
            created = now - timedelta(days=20, seconds=i % 86_400)
            accounts.append((account, created, "1", False, None, partition_for(account, DEFAULT_PARTITIONS)))
            plans.append((f"pc-{uuid.UUID(int=i)}", account, created, "free", created, None))
            anchor = created
            if i % 3 == 0:
                anchor = now - timedelta(days=10, seconds=i % 3600)
                plans.append((f"pp-{uuid.UUID(int=i)}", account, anchor, "pro", anchor, anchor + timedelta(days=31)))
            opened = now - timedelta(hours=1, seconds=i % 3600)
            week = now - timedelta(days=2, seconds=i % 3600)
            flows = 1_000_000 + i
            windows.append((account, "5h", opened, opened + timedelta(hours=5), flows))
            windows.append((account, "week", week, week + timedelta(days=7), flows * 3))
            month = anchor if i % 3 == 0 else created  # within a month of the anchor: the first period
            windows.append((account, "month", month, month + timedelta(days=30), flows * 5))
            if i % 10 == 0:
                ledger.append((f"top-{i}", account, 20_000_000, "top_up", created))
        await conn.copy_records_to_table(
            "accounts", schema_name="quota", records=accounts,
            columns=["account_id", "created_at", "multiplier", "extra_usage", "payg_key_id", "partition"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "plan_history", schema_name="quota", records=plans,
            columns=["event_id", "account_id", "effective_at", "plan", "period_anchor", "paid_until"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "windows", schema_name="quota", records=windows,
            columns=["account_id", "kind", "started_at", "ends_at", "flows_micros"],
        )  # fmt: skip
        await conn.copy_records_to_table(
            "ledger", schema_name="quota", records=ledger,
            columns=["event_id", "account_id", "amount_micros", "kind", "occurred_at"],
        )  # fmt: skip
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def generate_keys(url: str, n: int, now: datetime) -> None:
    """n keys over n / 2 accounts, as KeyCreated leaves them (a tenth used, a twentieth revoked)."""
    conn = await asyncpg.connect(url)
    try:
        rows = []
        for i in range(n):
            created = now - timedelta(days=20, seconds=i % 86_400)
            used = created + timedelta(days=1) if i % 10 == 0 else None
            revoked = created + timedelta(days=2) if i % 20 == 0 else None
            rows.append((
                f"key_{uuid.UUID(int=i).hex[-16:]}", f"acc_{uuid.UUID(int=i // 2).hex[-24:]}", "default",
                "subscription", "sk-ss-v1-", f"{i % 10_000:04d}", uuid.UUID(int=i).hex * 2, created,
                used, revoked, [str(uuid.UUID(int=i))],
            ))  # fmt: skip
        await conn.copy_records_to_table(
            "keys", schema_name="keys", records=rows,
            columns=["key_id", "account_id", "name", "kind", "prefix", "last4", "key_hash", "created_at",
                     "last_used_at", "revoked_at", "applied_events"],
        )  # fmt: skip
    finally:
        await conn.close()


def top_sites(snapshot: tracemalloc.Snapshot, limit: int = 8) -> list[str]:
    stats = snapshot.statistics("lineno")[:limit]
    return [f"{s.size / KIB / 1024:8.1f} MiB {s.count:>10,} blocks  {s.traceback[0]}" for s in stats]


Loader = Callable[[asyncpg.Connection], Awaitable[int]]


async def measured_load(url: str, trace: bool, load: Loader) -> dict[str, object]:
    """Resident memory and time of `load` (which returns how many items it loaded) in this process."""
    conn = await asyncpg.connect(url)
    gc.collect()
    before, _ = rss_kib()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    items = await load(conn)
    seconds = time.perf_counter() - started
    await conn.close()
    gc.collect()
    sites = top_sites(tracemalloc.take_snapshot()) if trace else []
    after, peak = rss_kib()
    return {"items": items, "seconds": seconds, "kib": after - before, "peak_kib": peak - before, "sites": sites}


async def child_quota(url: str, trace: bool) -> dict[str, object]:
    from libs.pricing.catalog import load_catalog
    from services.quota.state import QuotaState

    catalog = load_catalog()
    state = QuotaState(catalog.default_usd_per_flow, catalog.insider_multiplier)

    async def load(conn: asyncpg.Connection) -> int:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            await state.load(conn, "quota")
        return len(state.accounts)

    return await measured_load(url, trace, load)


async def child_takeover(url: str, trace: bool) -> dict[str, object]:
    """A take-over's load: one partition's accounts (of DEFAULT_PARTITIONS), by accounts.partition."""
    from libs.pricing.catalog import load_catalog
    from services.quota.state import QuotaState

    catalog = load_catalog()
    state = QuotaState(catalog.default_usd_per_flow, catalog.insider_multiplier)

    async def load(conn: asyncpg.Connection) -> int:
        await state.load(conn, "quota", {1})
        return len(state.accounts)

    return await measured_load(url, trace, load)


async def child_keys(url: str, trace: bool) -> dict[str, object]:
    from services.keys.registry import KeyRegistry

    registry = KeyRegistry()

    async def load(conn: asyncpg.Connection) -> int:
        await registry.load(conn, "keys")
        return len(registry.by_id)

    return await measured_load(url, trace, load)


async def child_keycache(n: int, trace: bool) -> dict[str, object]:
    """The gateway's key cache holding n keys, each entered as a key.lookup answer enters it."""
    from libs import apikeys
    from libs.keycache import KeyCache
    from proto.v1 import KeyFound, KeyView, encode

    now = datetime.now(UTC)
    answers = [
        encode(KeyFound(key=KeyView(
            id=f"key_{uuid.UUID(int=i).hex[-16:]}", account_id=f"acc_{uuid.UUID(int=i // 2).hex[-24:]}", name="default",
            kind="subscription", prefix="sk-ss-v1-", last4=f"{i % 10_000:04d}", created_at=now - timedelta(days=20),
            last_used_at=now,
        )))
        for i in range(n)
    ]  # fmt: skip
    hashes = [apikeys.hash_secret(f"sk-ss-v1-{i}") for i in range(n)]
    cache = KeyCache(None, max_entries=n)  # type: ignore[arg-type]  # no lookups: entries go in as _lookup puts them
    gc.collect()
    before, _ = rss_kib()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    for key_hash, answer in zip(hashes, answers, strict=True):  # as KeyCache._lookup enters an answer
        cache._known[key_hash] = (time.monotonic(), cache._found.decode(answer).key)  # type: ignore[assignment]
    seconds = time.perf_counter() - started
    del hashes, answers
    gc.collect()
    sites = top_sites(tracemalloc.take_snapshot()) if trace else []
    after, peak = rss_kib()
    return {"items": len(cache), "seconds": seconds, "kib": after - before, "peak_kib": peak - before,
            "sites": sites}  # fmt: skip


def measure(kind: str, arg: str, trace: bool) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.memory", "--child", kind, arg] + (["--trace"] if trace else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def line(what: str, r: dict[str, object], target: str) -> str:
    items, kib, peak = int(r["items"]), int(r["kib"]), int(r["peak_kib"])  # type: ignore[call-overload]
    return (f"  {what:<34} {items:>10,}  {kib * KIB / max(items, 1):>7,.0f} B each  {kib / 1024:>8,.0f} MiB "
            f"(peak +{peak / 1024:,.0f} MiB)  {r['seconds']:>6.1f} s  {target}")  # fmt: skip


async def run(args: argparse.Namespace, base_url: str) -> None:
    now = datetime.now(UTC)
    print(f"\nmemory bench: {os.cpu_count()} cores (shared: other processes may run meanwhile)")
    print(f"  {'':<34} {'items':>10}  {'per item':>14}  {'resident':>12} {'':>16}  {'load':>8}")
    for n in [int(v) for v in str(args.memory_accounts).split(",") if v]:
        url = f"{base_url.rsplit('/', 1)[0]}/flowplan_mem_q{n}"
        ensure_database(url)
        for folder in migration_dirs():
            await migrate_async(url, folder)
        generated = time.perf_counter()
        await generate_quota(url, n, now)
        print(f"  ({n:,} accounts generated into quota's tables in {time.perf_counter() - generated:,.0f} s)")
        r = measure("quota", url, args.trace)
        print(line("quota: accounts with open windows", r, "target <= 1,024 B each, load <= 30 s for 1M"))
        for site in r["sites"]:  # type: ignore[attr-defined]
            print("      " + site)
        r = measure("takeover", url, args.trace)
        print(line(f"quota: take-over, 1 of {DEFAULT_PARTITIONS} partitions", r, "reads that partition's rows only"))
    if args.memory_keys:
        url = f"{base_url.rsplit('/', 1)[0]}/flowplan_mem_k"
        ensure_database(url)
        for folder in migration_dirs():
            await migrate_async(url, folder)
        await generate_keys(url, args.memory_keys, now)
        for what, kind, arg in (("keys: registry", "keys", url),
                                ("gateway: key cache (LRU)", "keycache", str(args.memory_keys))):  # fmt: skip
            r = measure(kind, arg, args.trace)
            print(line(what, r, ""))
            for site in r["sites"]:  # type: ignore[attr-defined]
                print("      " + site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARG"))
    add_arguments(parser)
    args = parser.parse_args()
    if args.child:
        kind, arg = args.child
        children = {"quota": lambda: child_quota(arg, args.trace), "keys": lambda: child_keys(arg, args.trace),
                    "takeover": lambda: child_takeover(arg, args.trace),
                    "keycache": lambda: child_keycache(int(arg), args.trace)}  # fmt: skip
        print(json.dumps(asyncio.run(children[kind]())))  # type: ignore[no-untyped-call]
        return
    from bench import work_dir
    from libs.localservers import LocalPostgres

    with work_dir() as work:
        postgres = LocalPostgres(work / "postgres", durable=True)
        postgres.start()
        try:
            asyncio.run(run(args, postgres.url))
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
