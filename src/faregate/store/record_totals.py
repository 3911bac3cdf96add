"""Per-model totals of the request records in a time range, from whichever store holds them.

Read-only, for `faregate cost --from-records`: a running gateway keeps writing, and this never
locks it out or changes anything (no migration either: a reader must not upgrade a schema).
Money is summed exactly from `cost_usd`, the exact decimal text every SQL store keeps beside
the nano-dollar integer (which rounds prices finer than a nano-dollar): in Python as Decimal for
SQLite, which has no exact decimal type, and as NUMERIC in PostgreSQL, which is exact and
returns a Decimal. Both give the same figures for the same records.

Cache hits cost nothing, and would cost nothing on any other model (the cache sits in front of
every model), so tokens are totalled over billed requests (cache miss or bypass) only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiosqlite

from faregate.config import StoreSettings
from faregate.store.sqlite.store import DB_FILENAME
from faregate.types import Price, Usage

BILLED = ("bypass", "miss")


class RecordsUnavailable(Exception):
    """The store cannot be read: no SQLite file, PostgreSQL unreachable, or no records table yet."""


@dataclass(slots=True)
class ModelTraffic:
    """Recorded traffic of one model (requests that failed outright count under the model asked for)."""

    model: str
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0  # billed requests only
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal(0))

    def priced_at(self, price: Price) -> Decimal:
        return price.cost(Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens))


async def read_traffic(settings: StoreSettings, since: float, until: float) -> list[ModelTraffic]:
    """Per-model totals for since <= created_at < until, most expensive first, from the store the
    settings name (PostgreSQL when store.postgres_url is set, as the gateway itself does)."""
    if settings.postgres_url is not None:
        totals = await postgres_traffic(settings.postgres_url, since, until)
    else:
        totals = await sqlite_traffic(settings.path, since, until)
    return sorted(totals, key=lambda r: (-r.cost, -r.requests, r.model))


async def sqlite_traffic(store_dir: str | Path, since: float, until: float) -> list[ModelTraffic]:
    path = Path(store_dir) / DB_FILENAME
    if not path.exists():
        raise RecordsUnavailable(f"no request records at {path}")
    totals: dict[str, ModelTraffic] = {}
    # mode=ro: a reader that cannot write, so it can never hold the writer's lock.
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as conn:
        cursor = await conn.execute(
            "SELECT COALESCE(model_used, model_requested), cache_status, prompt_tokens, completion_tokens,"
            " cost_usd FROM request_records WHERE created_at >= ? AND created_at < ?",
            (since, until),
        )
        # Row by row: SQLite's SUM over the text column would go through floats.
        async for model, cache_status, prompt, completion, cost in cursor:
            row = totals.setdefault(str(model), ModelTraffic(str(model)))
            row.requests += 1
            row.cost += Decimal(cost)
            if cache_status in BILLED:
                row.prompt_tokens += int(prompt)
                row.completion_tokens += int(completion)
            else:
                row.cache_hits += 1
    return list(totals.values())


# Grouped in the database: a week of traffic is millions of rows, the answer a few per model.
_POSTGRES_TOTALS = """
SELECT COALESCE(model_used, model_requested) AS model,
       COUNT(*) AS requests,
       COUNT(*) FILTER (WHERE NOT cache_status = ANY($3::text[])) AS cache_hits,
       COALESCE(SUM(prompt_tokens) FILTER (WHERE cache_status = ANY($3::text[])), 0) AS prompt_tokens,
       COALESCE(SUM(completion_tokens) FILTER (WHERE cache_status = ANY($3::text[])), 0)
           AS completion_tokens,
       SUM(cost_usd::numeric) AS cost
FROM request_records
WHERE created_at >= $1 AND created_at < $2
GROUP BY 1
"""


async def postgres_traffic(url: str, since: float, until: float) -> list[ModelTraffic]:
    # asyncpg is imported here: SQLite users never load it (as store.open_store does).
    import asyncpg

    try:
        # One read-only connection, not the store's pool: the server refuses any write on it.
        conn = await asyncpg.connect(
            url, timeout=10, command_timeout=60, server_settings={"default_transaction_read_only": "on"}
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise RecordsUnavailable(f"cannot connect to PostgreSQL (store.postgres_url): {exc}") from exc
    try:
        rows = await conn.fetch(_POSTGRES_TOTALS, since, until, list(BILLED))
    except asyncpg.UndefinedTableError as exc:
        raise RecordsUnavailable("no request records in PostgreSQL: no gateway has used it yet") from exc
    finally:
        await conn.close()
    return [
        ModelTraffic(
            model=str(r["model"]),
            requests=int(r["requests"]),
            cache_hits=int(r["cache_hits"]),
            # SUM of BIGINT is NUMERIC, which asyncpg gives as a Decimal.
            prompt_tokens=int(r["prompt_tokens"]),
            completion_tokens=int(r["completion_tokens"]),
            cost=Decimal(r["cost"]),
        )
        for r in rows
    ]
