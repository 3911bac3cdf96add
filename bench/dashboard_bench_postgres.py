"""The dashboard's queries on PostgreSQL at N records: the same synthetic traffic as
bench/dashboard_bench.py, copied into a throwaway PostgreSQL server (Debian's binaries, as the
tests start them), then the hourly rollups caught up, then every panel's query timed.

    python bench/dashboard_bench_postgres.py --records 1000000 [--no-rollup]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

# The throwaway server comes from the test helpers; the synthetic rows from the SQLite bench.
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parent)]

from dashboard_bench import DAY, synthetic_rows, timed  # noqa: E402
from faregate.store.analytics_rows import Slice  # noqa: E402
from faregate.store.postgres.analytics import PostgresAnalytics  # noqa: E402
from faregate.store.postgres.rollup import PostgresRollupWriter  # noqa: E402
from faregate.store.postgres.store import PostgresStore  # noqa: E402
from faregate.store.rows import INSERT_COLUMNS  # noqa: E402
from servers import run_postgres  # noqa: E402

RANGES = (("24h", 1, 900), ("7d", 7, 7200), ("30d", 30, 21600))


async def fill(url: str, n: int, now: float) -> None:
    store = await PostgresStore.open(url)  # creates the tables
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        rows = synthetic_rows(n, now)
        while batch := [r for _, r in zip(range(100_000), rows, strict=False)]:
            await conn.copy_records_to_table("request_records", records=batch, columns=list(INSERT_COLUMNS))
        await conn.execute(
            "INSERT INTO api_keys (id, name, prefix, key_hash, premium, created_at)"
            " SELECT DISTINCT key_id, 'bench ' || key_id, 'fg-' || substr(key_id, 5), 'h' || key_id, false, 0"
            " FROM request_records WHERE key_id IS NOT NULL"
        )
        await conn.execute(
            "INSERT INTO feedback (request_id, key_id, created_at, score, thumb, rating)"
            " SELECT request_id, key_id, created_at + 60, (id % 5) * 25, NULL, (id % 5) + 1"
            " FROM request_records WHERE id % 100 = 0 AND status = 200"
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def queries(
    a: PostgresAnalytics, s: Slice, one_model: Slice, bucket: int
) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "summary (totals)": lambda: a.totals(s),
        "series": lambda: a.series(s, bucket),
        "breakdown by model": lambda: a.breakdown(s, "model"),
        "breakdown by provider": lambda: a.breakdown(s, "provider"),
        "breakdown by key": lambda: a.breakdown(s, "key"),
        "breakdown by route": lambda: a.breakdown(s, "route"),
        "latency by route": lambda: a.latency(s, "route"),
        "latency by model": lambda: a.latency(s, "model"),
        "reliability by provider": lambda: a.reliability(s, "provider"),
        "failed attempts by offer": lambda: a.failed_attempts_by_offer(s),
        "feedback by model": lambda: a.feedback(s, "model"),
        "recent requests": lambda: a.recent(s, limit=50),
        "recent requests, search": lambda: a.recent(s, search="timeout", limit=50),
        "summary, one model": lambda: a.totals(one_model),
    }


async def run(url: str, n: int, repeat: int, rollup: bool) -> None:
    now = time.time()
    started = time.perf_counter()
    await fill(url, n, now)
    print(f"filled {n:,} records in {time.perf_counter() - started:.1f} s", flush=True)
    analytics = await PostgresAnalytics.open(url)
    try:
        if rollup:
            started = time.perf_counter()
            covered = await PostgresRollupWriter(analytics.pool).catch_up()
            print(f"rolled up {covered:,} records in {time.perf_counter() - started:.1f} s", flush=True)
            conn = await asyncpg.connect(url)
            await conn.execute("VACUUM ANALYZE")
            await conn.close()
        results: dict[str, dict[str, float]] = {}
        for label, days, bucket in RANGES:
            s = Slice(now - days * DAY, now + 1)
            one_model = Slice(now - days * DAY, now + 1, model="gpt-4o")
            for name, call in queries(analytics, s, one_model, bucket).items():
                results.setdefault(name, {})[label] = await timed(repeat, call)
    finally:
        await analytics.close()
    print(f"\n{'query (median ms)':<28}" + "".join(f"{label:>10}" for label, _, _ in RANGES))
    for name, by_range in results.items():
        print(f"{name:<28}" + "".join(f"{by_range[label]:>10.1f}" for label, _, _ in RANGES))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-rollup", action="store_true", help="Answer from request_records alone")
    args = parser.parse_args()
    with run_postgres() as server:
        asyncio.run(run(server.url(), args.records, args.repeat, not args.no_rollup))


if __name__ == "__main__":
    main()
