"""Hourly rollups of request records in the embedded store, so the dashboard reads a month in
milliseconds.

`rollup_hourly` holds, per hour and per model, provider, route, key and wire (and overall,
dim ''), the sums the dashboard shows. `RollupWriter.step` adds the records written since
its last run (tracked by request_records.id in `rollup_state`), a chunk per transaction,
so a store that already holds millions of records catches up without holding the write
lock for long. The queries in sqlite/analytics.py read whole hours from here and the rest (the
partial hours at the edges of a range, and records newer than the rollup) from
request_records, so every figure is exact whether or not the rollup is current. What a record
adds is store/record_sums.py; PostgreSQL's rollup (postgres/rollup.py) adds the same sums.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from faregate.store.protocols import StoreUnavailable
from faregate.store.record_sums import CHUNK, EVENT_COLUMNS, HOUR, ROLLUP_DIMS, TOTAL_COLUMNS
from faregate.store.sqlite.store import BUSY_TIMEOUT_MS
from faregate.types import ANSWERED_OUTCOMES

STATE_NAME = "hourly"

# Rows whose attempts say something: more than one attempt, or a failure. Written word for word
# as the partial index `request_records_eventful` says it, so SQLite uses that index.
EVENTFUL = "(attempt_count > 1 OR status >= 500)"
# Calls that answered: the served one, a cascade step its judge refused, an LLM judge's call.
_ANSWERED = "(" + ", ".join(f"'{o}'" for o in ANSWERED_OUTCOMES) + ")"


def _insert_sql(dim: str, group: str) -> str:
    columns = (*TOTAL_COLUMNS, *EVENT_COLUMNS)
    names = ", ".join(name for name, _ in columns)
    sums = ", ".join(f"SUM({expr})" for _, expr in columns)
    updates = ", ".join(f"{name} = rollup_hourly.{name} + excluded.{name}" for name, _ in columns)
    # NULL never equals NULL in a primary key, so "no key" / "no route" is stored as ''.
    return (
        f"INSERT INTO rollup_hourly (dim, value, bucket, {names})"
        f" SELECT '{dim}', COALESCE({group}, ''), CAST(created_at / {HOUR} AS INTEGER) * {HOUR}, {sums}"
        f" FROM request_records WHERE {_NEW_IDS} GROUP BY 2, 3"
        f" ON CONFLICT (dim, value, bucket) DO UPDATE SET {updates}"
    )


_NEW_IDS = "request_records.id > ? AND request_records.id <= ?"
# One row per failed attempt of the eventful records (json_each walks each record's attempts).
FAILED_ATTEMPTS_FROM = (
    "FROM request_records, json_each(request_records.attempts) AS a WHERE {where}"
    f" AND {EVENTFUL} AND json_extract(a.value, '$.outcome') NOT IN {_ANSWERED}"
)
FAILED_ATTEMPT_GROUP = (
    "json_extract(a.value, '$.provider') AS provider, json_extract(a.value, '$.model') AS model,"
    " json_extract(a.value, '$.outcome') AS outcome"
)
_INSERTS = (
    *(_insert_sql(dim, group) for dim, group in ROLLUP_DIMS),
    f"INSERT INTO rollup_failures_hourly (provider, model, outcome, bucket, attempts)"
    f" SELECT {FAILED_ATTEMPT_GROUP}, CAST(created_at / {HOUR} AS INTEGER) * {HOUR}, COUNT(*)"
    f" {FAILED_ATTEMPTS_FROM.format(where=_NEW_IDS)} GROUP BY 1, 2, 3, 4"
    " ON CONFLICT (provider, model, outcome, bucket)"
    " DO UPDATE SET attempts = rollup_failures_hourly.attempts + excluded.attempts",
)


async def rolled_up_to(conn: aiosqlite.Connection) -> int:
    """The id of the last record included in the rollup (0: none)."""
    rows = await conn.execute_fetchall("SELECT last_id FROM rollup_state WHERE name = ?", (STATE_NAME,))
    for row in rows:
        return int(row[0])
    return 0


class RollupWriter:
    """Adds new records to rollup_hourly. Safe with several processes on one database: each step
    reads and moves the watermark inside one write transaction."""

    def __init__(self, conn: aiosqlite.Connection, chunk: int = CHUNK) -> None:
        self._conn = conn
        self._chunk = chunk

    @classmethod
    async def open(cls, db_path: str | Path, chunk: int = CHUNK) -> RollupWriter:
        """A writer on a connection of its own to the store's (already migrated) database."""
        conn = await aiosqlite.connect(db_path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except BaseException:
            await conn.close()
            raise
        return cls(conn, chunk)

    async def close(self) -> None:
        await self._conn.close()

    async def step(self) -> int:
        """Roll up one chunk of new records; returns how many ids it covered (0: up to date)."""
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                start = await rolled_up_to(self._conn)
                rows = await self._conn.execute_fetchall("SELECT MAX(id) FROM request_records")
                newest = int(next(iter(rows))[0] or 0)
                end = min(newest, start + self._chunk)
                if end > start:
                    for sql in _INSERTS:
                        await self._conn.execute(sql, (start, end))
                    await self._conn.execute(
                        "INSERT INTO rollup_state (name, last_id) VALUES (?, ?)"
                        " ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
                        (STATE_NAME, end),
                    )
                await self._conn.execute("COMMIT")
            except BaseException:
                await self._conn.rollback()
                raise
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return end - start

    async def catch_up(self) -> int:
        """Step until up to date; returns the number of ids covered."""
        total = 0
        while covered := await self.step():
            total += covered
        return total
