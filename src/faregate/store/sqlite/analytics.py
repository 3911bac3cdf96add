"""The analytics queries (store/analytics_queries.py) on the embedded store.

Reads go through a connection of their own, so a dashboard query never queues in front of the
record writer or a key lookup on the store's connection; SQLite in WAL mode lets it read while
they write. The rollup (store/sqlite/rollup.py) keeps a watermark by id: the records above it
are the ones it has not read yet.

SQLite's side of the dialect: JSON through json_extract / json_each (failed attempts);
CAST(x AS INTEGER) truncates; LIKE ignores ASCII case only, so search folds both sides with the
`fold` function registered here (as PostgreSQL's ILIKE, all of Unicode); evenly spaced ids come from
WITH RECURSIVE; money text is summed exactly by the `decimal_sum` aggregate registered here
(SQLite has no exact decimal type).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from faregate.store.analytics_queries import AnalyticsQueries, Dialect, Part
from faregate.store.protocols import StoreUnavailable
from faregate.store.record_sums import EVENT_COLUMNS
from faregate.store.sqlite.rollup import (
    EVENTFUL,
    FAILED_ATTEMPT_GROUP,
    FAILED_ATTEMPTS_FROM,
    STATE_NAME,
    rolled_up_to,
)
from faregate.store.sqlite.store import BUSY_TIMEOUT_MS, unreadable_file_as_unavailable


def _sample_ids(lo: int, hi: int, step: int) -> tuple[str, str, list[Any]]:
    cte = "RECURSIVE ids(i) AS (SELECT ? UNION ALL SELECT i + ? FROM ids WHERE i + ? <= ?), "
    return cte, "ids", [lo, step, step, hi]


def _fold(text: str | None) -> str | None:
    """SQL function fold(text): lower case character by character, as PostgreSQL's ILIKE does
    (towlower of each character), so a search finds the same records on both stores; str.lower
    alone would differ on the few characters whose lower case is longer (İ) or depends on context
    (a final Σ)."""
    if text is None or text.isascii():
        return text and text.lower()
    return "".join([c.lower()[0] for c in text])


SQLITE = Dialect(
    event_columns=EVENT_COLUMNS,
    eventful=EVENTFUL,
    failed_attempts=f"SELECT {FAILED_ATTEMPT_GROUP}, {{t}} {FAILED_ATTEMPTS_FROM}",
    floor_int=lambda expr: f"CAST({expr} AS INTEGER)",
    exact_sum=lambda column: f"decimal_sum({column})",
    sample_ids=_sample_ids,
    contains=lambda column: f"fold({column}) LIKE fold(?) ESCAPE '\\'",
    pending_by_id=True,
)


@contextmanager
def _unavailable_on_operational_error() -> Iterator[None]:
    # As in the store: "locked", "disk I/O error" and the like are worth trying again later.
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(str(exc)) from exc


class _DecimalSum:
    """SQL aggregate decimal_sum(text): the exact sum of decimal texts, as text (NULLs skipped)."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return format(self.total, "f")


class SQLiteAnalytics(AnalyticsQueries):
    dialect = SQLITE

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, db_path: str | Path, *, read_only: bool = False) -> SQLiteAnalytics:
        """A second connection to the store's (already migrated) database file. `read_only`: one
        that cannot write, so it never holds the writer's lock (for commands beside a live
        gateway); a missing file is StoreUnavailable then, not a new empty database."""
        if read_only:
            if not await asyncio.to_thread(Path(db_path).exists):
                raise StoreUnavailable(f"no request records at {db_path}")
            # A URI: the path percent-encoded, or a #, ? or % in it would name another file.
            uri = f"file:{quote(str(db_path))}?mode=ro"
            with unreadable_file_as_unavailable(db_path):
                conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        else:
            with unreadable_file_as_unavailable(db_path):
                conn = await aiosqlite.connect(db_path, isolation_level=None)
        try:
            with unreadable_file_as_unavailable(db_path):
                await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                # 64 MiB of page cache: the covering index of a busy day stays in memory.
                await conn.execute("PRAGMA cache_size=-65536")
                # aiosqlite has no create_aggregate: its own queue onto the connection's thread.
                register: Callable[..., Awaitable[None]] = conn._execute
                await register(conn._conn.create_aggregate, "decimal_sum", 1, _DecimalSum)
                await register(conn._conn.create_function, "fold", 1, _fold, deterministic=True)
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    @property
    def connection(self) -> aiosqlite.Connection:
        return self._conn

    async def close(self) -> None:
        await self._conn.close()

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        with _unavailable_on_operational_error():
            return list(await self._conn.execute_fetchall(sql, params))

    async def _pending(self) -> Part | None:
        with _unavailable_on_operational_error():
            watermark = await rolled_up_to(self._conn)
        if watermark == 0:
            return None
        # The watermark is read again inside the query itself: one statement sees one snapshot,
        # whereas the value just read may be stale by then (a rollup step that commits in between
        # would put records both in the sums and among the pending ones, counted twice).
        return (
            " AND request_records.id > (SELECT COALESCE(MAX(last_id), 0) FROM rollup_state WHERE name = ?)",
            [STATE_NAME],
        )
