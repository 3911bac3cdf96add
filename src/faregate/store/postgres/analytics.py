"""The analytics queries (store/analytics_queries.py) on the shared PostgreSQL store.

A pool of its own, apart from the store's, so a slow dashboard query never holds a connection the
record writer or a key lookup is waiting for. The rollup (store/postgres/rollup.py) keeps the
records it has not read yet in the small `rollup_pending` queue, filled by a trigger.

PostgreSQL's side of the dialect: attempts is JSON text, read as `attempts::jsonb` with
jsonb_array_length / -> / ->> / jsonb_array_elements WITH ORDINALITY; CAST(x AS INTEGER)
rounds, so buckets use floor(); text ordering uses COLLATE "C" (byte order, as SQLite's
BINARY) whatever the database locale; LIKE is case-sensitive, so search uses ILIKE; evenly
spaced ids come from generate_series; money text is summed exactly as NUMERIC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from faregate.store.analytics_queries import AnalyticsQueries, Dialect, Part
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.pool import create_pool
from faregate.store.postgres.rollup import EVENT_COLUMNS, EVENTFUL, FAILED_ATTEMPTS, PENDING
from faregate.store.protocols import StoreUnavailable

POOL_SIZE = 4


def _sample_ids(lo: int, hi: int, step: int) -> tuple[str, str, list[Any]]:
    return "", "generate_series(?::bigint, ?::bigint, ?::bigint) AS ids(i)", [lo, hi, step]


POSTGRES = Dialect(
    event_columns=EVENT_COLUMNS,
    eventful=EVENTFUL,
    failed_attempts=FAILED_ATTEMPTS,
    floor_int=lambda expr: f"floor({expr})::bigint",
    exact_sum=lambda column: f"SUM({column}::numeric)",
    sample_ids=_sample_ids,
    collate=' COLLATE "C"',
)


def numbered(sql: str) -> str:
    """The queries are written with SQLite's `?`; asyncpg numbers them ($1, $2, ...). None of the
    SQL has a literal '?' (no jsonb ? operator either)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


class PostgresAnalytics(AnalyticsQueries):
    dialect = POSTGRES

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = POOL_SIZE, read_only: bool = False
    ) -> PostgresAnalytics:
        """A small pool of its own on the store's (already migrated) database. `read_only`: the
        server refuses any write on it (for commands that only read records)."""
        # asyncpg prepares every statement; after five runs PostgreSQL may switch to a generic
        # plan, blind to the time range, and join a million records where a custom plan reads a
        # few thousand (measured: 50 ms became 1 s).
        server_settings = {"plan_cache_mode": "force_custom_plan"}
        if read_only:
            server_settings["default_transaction_read_only"] = "on"
        try:
            pool = await create_pool(
                url, min_size=1, max_size=pool_size, command_timeout=60, server_settings=server_settings
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL (store.postgres_url): {exc}") from exc
        return cls(pool)

    @property
    def pool(self) -> Any:
        return self._pool

    async def close(self) -> None:
        await self._pool.close()

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        try:
            with unavailable_errors():
                return [tuple(row) for row in await self._pool.fetch(numbered(sql), *params)]
        except asyncpg.UndefinedTableError as exc:
            # Only a reader opened beside the store can see this: the store migrates first.
            raise StoreUnavailable("no request records in PostgreSQL: no gateway has used it yet") from exc

    async def _pending(self) -> Part | None:
        # A query is one statement, one snapshot: a record is in the sums or still pending.
        return f" AND {PENDING}", []
