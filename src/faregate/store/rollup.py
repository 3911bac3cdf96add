"""Hourly rollups of request records, so the dashboard reads a month in milliseconds.

`rollup_hourly` holds, per hour and per model, provider, route and key (and overall,
dim ''), the sums the dashboard shows. `RollupWriter.step` adds the records written since
its last run (tracked by request_records.id in `rollup_state`), a chunk per transaction,
so a store that already holds millions of records catches up without holding the write
lock for long. The queries in analytics.py read whole hours from here and the rest (the
partial hours at the edges of a range, and records newer than the rollup) from
request_records, so every figure is exact whether or not the rollup is current.

Porting to PostgreSQL: the statements are plain SQL (INSERT ... SELECT ... ON CONFLICT DO
UPDATE works there too); the JSON expressions change (see analytics.py), and a sequence
does not commit in id order under concurrent writers, so the watermark there should trail
by a few seconds (or use a per-row `rolled` flag).
"""

from __future__ import annotations

import sqlite3

import aiosqlite

from faregate.store.base import StoreUnavailable
from faregate.types import ANSWERED_OUTCOMES

HOUR = 3600
# Records per transaction while catching up.
CHUNK = 20_000
STATE_NAME = "hourly"

# Requests that failed entirely have no model_used; they count against the model asked for.
# `{t}` is a table alias and a dot when a query joins (feedback), else nothing.
GROUP_SQL: dict[str, str] = {
    "model": "COALESCE({t}model_used, {t}model_requested)",
    "provider": "{t}provider",
    "key": "{t}key_id",
    "route": "{t}route",
}
CACHE_HIT = "cache_status IN ('hit', 'semantic-hit')"


def _flag(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


# (column of rollup_hourly, the value one record adds to it). Every one is read from the columns
# of the covering index `request_records_dashboard`, so raw scans never touch the table rows.
TOTAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("requests", "1"),
    ("errors", _flag("status >= 500")),
    ("client_errors", _flag("status >= 400 AND status < 500")),
    ("budget_refusals", _flag("status = 402")),
    ("rate_limited", _flag("status = 429")),
    ("cost_nanousd", "cost_nanousd"),
    ("baseline_nanousd", "baseline_cost_nanousd"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cache_lookups", _flag("cache_status <> 'bypass'")),
    ("cache_hits", _flag("cache_status = 'hit'")),
    ("semantic_hits", _flag("cache_status = 'semantic-hit'")),
    ("cache_saved_nanousd", f"CASE WHEN {CACHE_HIT} THEN baseline_cost_nanousd - cost_nanousd ELSE 0 END"),
    ("empty_responses", "empty_response"),
)

# Rows whose attempts say something: more than one attempt, or a failure. Written word for word
# as the partial index `request_records_eventful` says it, so SQLite uses that index.
EVENTFUL = "(json_array_length(attempts) > 1 OR status >= 500)"
_LAST_OFFER = "json_extract(attempts, '$[#-1].provider') || '/' || json_extract(attempts, '$[#-1].model')"
# Calls that answered: the served one, a cascade step its judge refused, an LLM judge's call.
_ANSWERED = "(" + ", ".join(f"'{o}'" for o in ANSWERED_OUTCOMES) + ")"
_FAILED = f"json_extract(f.value, '$.outcome') NOT IN {_ANSWERED}"
# A fallback: an offer failed and another one served. (A cascade escalating from a cheap answer
# to a stronger model is not a fallback; nothing failed.) A retry: two attempts in a row on the
# same offer (the attempt loop retries an offer before it moves on).
FELL_BACK = (
    f"EXISTS (SELECT 1 FROM json_each(attempts) AS f WHERE {_FAILED}"
    " AND json_extract(f.value, '$.provider') || '/' || json_extract(f.value, '$.model')"
    f" <> {_LAST_OFFER})"
)
RETRIED = (
    "EXISTS (SELECT 1 FROM json_each(attempts) AS a JOIN json_each(attempts) AS b ON b.key = a.key + 1"
    f" WHERE json_extract(a.value, '$.outcome') NOT IN {_ANSWERED}"
    " AND json_extract(a.value, '$.provider') = json_extract(b.value, '$.provider')"
    " AND json_extract(a.value, '$.model') = json_extract(b.value, '$.model'))"
)
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fallbacks", _flag(f"json_array_length(attempts) > 1 AND {FELL_BACK}")),
    ("retried", _flag(f"json_array_length(attempts) > 1 AND {RETRIED}")),
)
ROLLUP_DIMS: tuple[tuple[str, str], ...] = (("", "''"), *((d, s.format(t="")) for d, s in GROUP_SQL.items()))


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
