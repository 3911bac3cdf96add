"""CPU per request record spent by the embedded store: writing it (`insert_records`, batches of 100)
and rolling it up (`RollupWriter.catch_up`, the dashboard's hourly sums), for this checkout or
another one (`--tree DIR`: a checkout's root, for an A/B against main).

The records are dashboard_bench.py's synthetic ones (1 in 20 with a retry or fallback, 2% failed),
written straight into the store's file for the rollup; the insert uses the store's own path with
RequestRecords (1 in 20 with a fallback). CPU time of this process (the store's SQLite thread
included). Nothing is sent over the network.

Usage: python bench/store_cost.py [--records 100000] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def rollup_us(records: int) -> float:
    from dashboard_bench import synthetic_rows
    from faregate.store import rows as rows_module
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.rollup import RollupWriter
    from faregate.store.sqlite.store import SQLiteStore

    # A checkout from before the attempts' summary columns writes the record's own columns only.
    columns: tuple[str, ...] = getattr(rows_module, "INSERT_COLUMNS", rows_module.RECORD_COLUMNS)
    directory = Path(tempfile.mkdtemp(prefix="faregate-store-cost-"))
    try:
        store = await SQLiteStore.open(directory)
        conn = sqlite3.connect(store.path, isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO request_records ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            synthetic_rows(records, time.time()),
        )
        conn.execute("COMMIT")
        conn.close()
        analytics = await SQLiteAnalytics.open(store.path)
        started = time.process_time()
        await RollupWriter(analytics.connection, chunk=records).catch_up()
        cpu = time.process_time() - started
        await analytics.close()
        await store.close()
    finally:
        shutil.rmtree(directory)
    return cpu / records * 1e6


def sequential_id(i: int) -> str:
    return f"req_{i:024x}"


def request_records(n: int, request_id: Callable[[int], str] = sequential_id) -> list[Any]:
    """`n` records, 1 in 20 with a fallback; `request_id(i)` names the i-th (record_writer.py
    passes the gateway's own ids)."""
    from faregate.types import Attempt, RequestRecord

    out = []
    for i in range(n):
        price = Decimal("0.000123")
        served = Attempt("m", "p", "ok", 10.0, cost=price, prompt_tokens=20, completion_tokens=12)
        attempts = [served]
        if i % 20 == 0:
            attempts.insert(0, Attempt("m", "q", "timeout", 5.0))
        out.append(
            RequestRecord(
                request_id=request_id(i),
                created_at=time.time(),
                key_id="key_1",
                model_requested="m",
                model_used="m",
                provider="p",
                status=200,
                stream=False,
                prompt_tokens=20,
                completion_tokens=12,
                cost_usd=Decimal("0.000123"),
                latency_ms=1.5,
                attempts=attempts,
                route="m",
                baseline_cost_usd=Decimal("0.001"),
                cache_status="bypass",
            )
        )
    return out


async def insert_us(records: int) -> float:
    from faregate.store.sqlite.store import SQLiteStore

    directory = Path(tempfile.mkdtemp(prefix="faregate-store-cost-"))
    try:
        store = await SQLiteStore.open(directory)
        batch = request_records(records)
        started = time.process_time()
        for i in range(0, records, 100):
            await store.insert_records(batch[i : i + 100])
        cpu = time.process_time() - started
        await store.close()
    finally:
        shutil.rmtree(directory)
    return cpu / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--tree", default=str(ROOT), help="the checkout to measure (its src and bench)")
    args = parser.parse_args()
    tree = Path(args.tree).resolve()
    sys.path[:0] = [str(tree / "src"), str(tree / "bench")]
    rollup = asyncio.run(rollup_us(args.records))
    insert = asyncio.run(insert_us(min(args.records, 20_000)))
    print(f"{tree}: rollup {rollup:.2f} µs CPU per record, insert {insert:.2f} µs CPU per record")


if __name__ == "__main__":
    main()
