"""Dashboard queries at a million request records.

Fills a temporary SQLite store (migrated like a real one) with N synthetic records spread
over 30 days (8 models, 4 providers, 200 keys, 5 routes; about 5% retried or fallen back, 2%
failed, 20% cache lookups, feedback on 1%), rolls them up as the gateway's background task
would, then times every query behind the dashboard's JSON endpoints over the last 24 hours,
7 days and all 30 days.

Usage: python bench/dashboard_bench.py [--records 1000000] [--repeat 3] [--keep DIR]
Prints a table (median ms of `repeat` runs) and writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from faregate.store.analytics_rows import Slice
from faregate.store.rows import INSERT_COLUMNS, attempt_summary, attempts_from_json, to_nanousd, usd_text
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.rollup import RollupWriter
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
MODELS = [
    ("deepseek-ai/DeepSeek-V4-Flash", Decimal("0.27"), Decimal("1.10")),
    ("deepseek-ai/DeepSeek-V4-Pro", Decimal("0.55"), Decimal("2.20")),
    ("Qwen/Qwen3-32B", Decimal("0.30"), Decimal("1.20")),
    ("THUDM/glm-4-plus", Decimal("0.20"), Decimal("0.80")),
    ("gpt-4o", Decimal("2.50"), Decimal("10.00")),
    ("gpt-4o-mini", Decimal("0.15"), Decimal("0.60")),
    ("Qwen/Qwen3-8B", Decimal("0.01"), Decimal("0.01")),
    ("deepseek-reasoner", Decimal("2.50"), Decimal("2.50")),
]
PROVIDERS = ["siliconflow", "deepseek", "openrouter", "dashscope"]
ROUTES = ["chat", "code", "classify", "summarize", "deepseek-v4-flash"]
BASELINE = (Decimal("2.50"), Decimal("10.00"))
MILLION = Decimal(1_000_000)


def attempt(
    model: str, provider: str, outcome: str, latency: float, status: int | None = None
) -> dict[str, Any]:
    return {
        "model": model,
        "provider": provider,
        "outcome": outcome,
        "latency_ms": round(latency, 1),
        "detail": "" if outcome == "ok" else "synthetic failure",
        "status": status,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": "0",
    }


def synthetic_rows(n: int, now: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    keys = [f"key_{i:04d}" for i in range(200)]
    for i in range(n):
        created = now - 30 * DAY + (i + rng.random()) * (30 * DAY / n)
        model, price_in, price_out = MODELS[min(int(rng.expovariate(0.5)), len(MODELS) - 1)]
        provider = PROVIDERS[rng.randrange(len(PROVIDERS))]
        prompt, completion = rng.randint(20, 4000), rng.randint(0, 1500)
        latency = rng.lognormvariate(6.2, 0.7)
        ttft: float | None = latency * rng.uniform(0.1, 0.4) if rng.random() < 0.5 else None
        status, error, cache = 200, None, "bypass"
        roll = rng.random()
        attempts = [attempt(model, provider, "ok", latency)]
        if roll < 0.02:
            status, error = 502, "All upstream attempts failed"
            attempts = [attempt(model, provider, "server_error", latency / 2, 500)] * 2
            prompt = completion = 0
        elif roll < 0.05:
            attempts.insert(0, attempt(model, provider, "rate_limited", 40.0, 429))
        elif roll < 0.07:
            attempts.insert(0, attempt(MODELS[4][0], "openai", "timeout", 1500.0))
        elif roll < 0.075:
            status, error, attempts, prompt, completion = 429, "rate limit", [], 0, 0
        if status == 200 and rng.random() < 0.2:
            cache = "hit" if rng.random() < 0.3 else ("semantic-hit" if rng.random() < 0.2 else "miss")
        cost = (Decimal(prompt) * price_in + Decimal(completion) * price_out) / MILLION
        if cache in ("hit", "semantic-hit"):
            cost, latency, attempts = Decimal(0), rng.uniform(1, 5), []
        baseline = (Decimal(prompt) * BASELINE[0] + Decimal(completion) * BASELINE[1]) / MILLION
        yield (
            f"req_bench{i:012x}",
            created,
            keys[int(rng.paretovariate(1.2)) % len(keys)],
            model,
            model if status == 200 else None,
            provider if status == 200 else None,
            status,
            int(ttft is not None),
            prompt,
            completion,
            usd_text(cost),
            to_nanousd(cost),
            0,
            latency,
            ttft,
            int(status == 200 and completion == 0),
            error,
            orjson.dumps(attempts).decode(),
            ROUTES[rng.randrange(len(ROUTES))],
            usd_text(baseline),
            to_nanousd(baseline),
            cache,
            # One request in ten over the Messages wire (outside rng: the other columns stay as before).
            "messages" if i % 10 == 3 else "chat",
            *attempt_summary(attempts_from_json(orjson.dumps(attempts).decode())),
        )


async def fill(directory: Path, n: int, now: float) -> Path:
    store = await SQLiteStore.open(directory)
    await store.close()
    db = directory / DB_FILENAME
    conn = sqlite3.connect(db, isolation_level=None)
    # Bulk load: drop the record indexes, insert in big transactions, rebuild the indexes from
    # their own definitions (much faster than keeping them up to date row by row).
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'request_records'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("PRAGMA synchronous=OFF")
    insert = (
        f"INSERT INTO request_records ({', '.join(INSERT_COLUMNS)})"
        f" VALUES ({', '.join('?' for _ in INSERT_COLUMNS)})"
    )
    rows = synthetic_rows(n, now)
    while True:
        batch = [row for _, row in zip(range(50_000), rows, strict=False)]
        if not batch:
            break
        conn.execute("BEGIN")
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash, premium, created_at)"
        " SELECT DISTINCT key_id, 'bench ' || key_id, 'fg-' || substr(key_id, 5), 'h' || key_id, 0, 0"
        " FROM request_records WHERE key_id IS NOT NULL"
    )
    conn.execute(
        "INSERT INTO feedback (request_id, key_id, created_at, score, thumb, rating)"
        " SELECT request_id, key_id, created_at + 60, (id % 5) * 25, NULL, (id % 5) + 1"
        " FROM request_records WHERE id % 100 = 0 AND status = 200"
    )
    conn.execute("ANALYZE")
    conn.close()
    return db


async def timed(repeat: int, call: Callable[[], Awaitable[Any]]) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


async def run(n: int, repeat: int, keep: Path | None) -> dict[str, Any]:
    directory = keep or Path(tempfile.mkdtemp(prefix="faregate-dash-bench-"))
    now = time.time()
    t0 = time.perf_counter()
    db = await fill(directory, n, now)
    fill_s = time.perf_counter() - t0
    print(f"filled {n:,} records in {fill_s:.1f}s ({db.stat().st_size / 2**20:.0f} MiB)")
    analytics = await SQLiteAnalytics.open(db)
    results: dict[str, dict[str, float]] = {}
    try:
        # What a gateway's rollup task does in the background: here all at once, as after an upgrade.
        t0 = time.perf_counter()
        await RollupWriter(analytics.connection).catch_up()
        rollup_s = time.perf_counter() - t0
        print(f"rolled up {n:,} records in {rollup_s:.1f}s")
        for label, days in (("24h", 1), ("7d", 7), ("30d", 30)):
            s = Slice(now - days * DAY, now + 1)
            narrowed = Slice(now - days * DAY, now + 1, model="gpt-4o")
            bucket = {1: 900, 7: 7200, 30: 21600}[days]
            queries: dict[str, Callable[[], Awaitable[Any]]] = {
                "summary (totals)": lambda s=s: analytics.totals(s),
                "series": lambda s=s, b=bucket: analytics.series(s, b),
                "breakdown by model": lambda s=s: analytics.breakdown(s, "model"),
                "breakdown by provider": lambda s=s: analytics.breakdown(s, "provider"),
                "breakdown by key": lambda s=s: analytics.breakdown(s, "key"),
                "breakdown by route": lambda s=s: analytics.breakdown(s, "route"),
                "latency by route": lambda s=s: analytics.latency(s, "route"),
                "latency by model": lambda s=s: analytics.latency(s, "model"),
                "reliability by provider": lambda s=s: analytics.reliability(s, "provider"),
                "failed attempts by offer": lambda s=s: analytics.failed_attempts_by_offer(s),
                "feedback by model": lambda s=s: analytics.feedback(s, "model"),
                "recent requests": lambda s=s: analytics.recent(s, limit=50),
                "recent requests, search": lambda s=s: analytics.recent(s, search="timeout", limit=50),
                "summary, one model": lambda s=narrowed: analytics.totals(s),
            }
            for name, call in queries.items():
                results.setdefault(name, {})[label] = await timed(repeat, call)
    finally:
        await analytics.close()
        if keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{'query (median ms)':<28}{'24h':>10}{'7d':>10}{'30d':>10}")
    for name, by_range in results.items():
        print(f"{name:<28}" + "".join(f"{by_range[r]:>10.1f}" for r in ("24h", "7d", "30d")))
    return {"records": n, "fill_s": round(fill_s, 1), "rollup_s": round(rollup_s, 1), "median_ms": results}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="fill this directory and keep it")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = parser.parse_args()
    report = asyncio.run(run(args.records, args.repeat, args.keep))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
