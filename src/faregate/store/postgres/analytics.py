"""The analytics queries (store/analytics_queries.py) on the shared PostgreSQL store.

A pool of its own, apart from the store's, so a slow dashboard query never holds a connection the
record writer or a key lookup is waiting for. The rollup (store/postgres/rollup.py) keeps the
records it has not read yet in the small `rollup_pending` queue, filled by a trigger.

PostgreSQL's side of the dialect: attempts is JSON text, read as `attempts::jsonb` with
jsonb_array_length / -> / ->> / jsonb_array_elements WITH ORDINALITY; CAST(x AS INTEGER)
rounds, so buckets use floor(); text ordering uses COLLATE "C" (byte order, as SQLite's
BINARY) whatever the database locale; LIKE is case-sensitive, so search uses ILIKE, under a
collation that folds all of Unicode when the database's own (LC_CTYPE "C") folds ASCII only;
evenly spaced ids come from generate_series; money text is summed exactly as NUMERIC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from faregate.store.analytics_queries import AnalyticsQueries, Dialect, Part
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.pool import REQUEST_READ_TIMEOUT_S, answered_within, cannot_connect, create_pool
from faregate.store.postgres.rollup import EVENTFUL, FAILED_ATTEMPTS, PENDING
from faregate.store.protocols import StoreUnavailable
from faregate.store.record_sums import EVENT_COLUMNS

POOL_SIZE = 4
# Collations whose lower case is libc's towlower (or the same simple mapping) of each character, as
# SQLite's fold() (store/sqlite/analytics.py), in order of preference: PostgreSQL 17's built-in
# one, then libc's; ICU's last (it lowers İ to i + a dot and a final Σ to ς, as no other does).
FOLDING_COLLATIONS = ("pg_c_utf8", "C.utf8", "C.UTF-8", "en_US.utf8", "en_US.UTF-8", "und-x-icu")


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


async def _folding_collation(conn: Any) -> str | None:
    """None when the database's ILIKE folds all of Unicode already; else the collation to search
    under (ILIKE folds case by the database's LC_CTYPE, and "C", often chosen for speed, folds
    ASCII only: "ÉCOLE" missed "école", which SQLite finds). None too when the database has none
    of FOLDING_COLLATIONS (a PostgreSQL without ICU on a system without C.UTF-8): ASCII only, then."""
    if await conn.fetchval("SELECT 'É' ILIKE 'é'"):
        return None
    found = await conn.fetch(
        "SELECT collname FROM pg_collation WHERE collname = ANY($1::text[])"
        " AND collencoding IN (-1, pg_char_to_encoding(getdatabaseencoding()))",
        list(FOLDING_COLLATIONS),
    )
    names = {row[0] for row in found}
    return next((name for name in FOLDING_COLLATIONS if name in names), None)


class PostgresAnalytics(AnalyticsQueries):
    dialect = POSTGRES

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        read_only: bool = False,
        transaction_pooling: bool = False,
    ) -> PostgresAnalytics:
        """A small pool of its own on the store's (already migrated) database. `read_only`: the
        server refuses any write on it (for commands that only read records; not through a pooler
        in transaction mode, `transaction_pooling`, which takes no session setting: they write
        nothing anyway)."""
        # asyncpg prepares every statement; after five runs PostgreSQL may switch to a generic
        # plan, blind to the time range, and join a million records where a custom plan reads a
        # few thousand (measured: 50 ms became 1 s).
        server_settings = {"plan_cache_mode": "force_custom_plan"}
        if read_only:
            server_settings["default_transaction_read_only"] = "on"
        try:
            pool = await create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                command_timeout=60,
                server_settings=server_settings,
                transaction_pooling=transaction_pooling,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"{cannot_connect(exc)} (store.postgres_url)") from exc
        try:
            # Bounded as a request's reads: a server that stops answering fails the start.
            collation = await answered_within(REQUEST_READ_TIMEOUT_S, pool, _folding_collation)
        except (OSError, asyncpg.PostgresError) as exc:
            pool.terminate()
            raise StoreUnavailable(f"cannot read from PostgreSQL (store.postgres_url): {exc}") from exc
        analytics = cls(pool)
        if collation is not None:
            analytics.dialect = replace(
                POSTGRES, contains=lambda column: f"{column} ILIKE (? COLLATE \"{collation}\") ESCAPE '\\'"
            )
        return analytics

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
