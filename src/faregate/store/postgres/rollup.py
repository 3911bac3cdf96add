"""Hourly rollups of request records on the shared PostgreSQL store (as store/sqlite/rollup.py on SQLite).

`rollup_hourly` and `rollup_failures_hourly` hold the same sums as on SQLite. What differs is
how a step knows which records it has read: SQLite keeps a watermark by id, sound with one
writer at a time, but a PostgreSQL sequence hands out ids that commit out of order when
several gateway instances write records at once, so a watermark could pass a record that
commits a moment later and never count it. Here a trigger puts each new record's id in
`rollup_pending`, in the transaction that writes the record (migration 5); a step takes a
chunk of ids out of it and adds those records to the sums, in one transaction. A query, being
one statement with one snapshot, sees a record either in the sums or still pending, never
both and never neither.

Several instances run the step at once: a transaction-scoped advisory lock lets one of them
work and the others return at once (two steps upserting the same rollup rows in different
orders could otherwise deadlock).
"""

from __future__ import annotations

from typing import Any

from faregate.store.postgres.errors import unavailable_errors
from faregate.store.record_sums import CHUNK, EVENT_COLUMNS, GROUP_SQL, HOUR, ROLLUP_DIMS, TOTAL_COLUMNS
from faregate.types import ANSWERED_OUTCOMES

LOCK = "hashtext('faregate-dashboard-rollup')"

# The attempts JSON, parsed.
ATTEMPTS = "attempts::jsonb"
ANSWERED = "(" + ", ".join(f"'{o}'" for o in ANSWERED_OUTCOMES) + ")"
# Word for word the condition of the partial index request_records_eventful (migration 9), so
# the planner uses it: the few records whose attempts say something.
EVENTFUL = "(attempt_count > 1 OR status >= 500)"
# One row per failed attempt of the eventful records of request_records matching `{where}`, with
# `{t}` as a fourth column (`1 AS attempts` when counting them).
FAILED_ATTEMPTS = (
    "SELECT a.v ->> 'provider' AS provider, a.v ->> 'model' AS model, a.v ->> 'outcome' AS outcome, {t}"
    f" FROM request_records, jsonb_array_elements({ATTEMPTS}) AS a(v)"
    f" WHERE {{where}} AND {EVENTFUL} AND (a.v ->> 'outcome') NOT IN {ANSWERED}"
)
# Records that no rollup step has read yet, as a condition on request_records.
PENDING = "request_records.id IN (SELECT id FROM rollup_pending)"
BUCKET = f"(floor(created_at / {HOUR}) * {HOUR})::bigint"
_SUMMED = (*TOTAL_COLUMNS, *EVENT_COLUMNS)
_NAMES = ", ".join(name for name, _ in _SUMMED)
_GROUPS = ", ".join(f"{expr.format(t='')} AS g_{dim}" for dim, expr in GROUP_SQL.items())


def _insert_sql(n: int, dim: str, group: str) -> str:
    """A data-modifying CTE adding the picked records' sums per `group` to rollup_hourly."""
    sums = ", ".join(f"SUM({name})" for name, _ in _SUMMED)
    updates = ", ".join(f"{name} = rollup_hourly.{name} + excluded.{name}" for name, _ in _SUMMED)
    # NULL never equals NULL in a primary key, so "no key" / "no route" is stored as ''.
    return (
        f"sums_{n} AS (INSERT INTO rollup_hourly (dim, value, bucket, {_NAMES})"
        f" SELECT '{dim}', COALESCE({group}, ''), bucket, {sums} FROM facts GROUP BY 2, 3"
        f" ON CONFLICT (dim, value, bucket) DO UPDATE SET {updates})"
    )


# One statement: take a chunk of records out of the queue, work out what each one adds (its attempts
# JSON parsed once), and add that to every dimension's sums and to the failed attempts.
_STEP = (
    "WITH taken AS (DELETE FROM rollup_pending WHERE id IN"
    " (SELECT id FROM rollup_pending ORDER BY id LIMIT $1) RETURNING id),"
    " picked AS (SELECT request_records.* FROM taken JOIN request_records USING (id)),"
    f" facts AS MATERIALIZED (SELECT {_GROUPS},"
    f" {BUCKET} AS bucket, {', '.join(f'{expr} AS {name}' for name, expr in _SUMMED)},"
    f" CASE WHEN {EVENTFUL} THEN attempts END AS eventful FROM picked),"
    + ", ".join(
        _insert_sql(n, dim, "''" if not dim else f"g_{dim}") for n, (dim, _) in enumerate(ROLLUP_DIMS)
    )
    + ", failures AS (INSERT INTO rollup_failures_hourly (provider, model, outcome, bucket, attempts)"
    " SELECT a.v ->> 'provider', a.v ->> 'model', a.v ->> 'outcome', bucket, COUNT(*)"
    " FROM facts, jsonb_array_elements(eventful::jsonb) AS a(v)"
    f" WHERE eventful IS NOT NULL AND (a.v ->> 'outcome') NOT IN {ANSWERED} GROUP BY 1, 2, 3, 4"
    " ON CONFLICT (provider, model, outcome, bucket)"
    " DO UPDATE SET attempts = rollup_failures_hourly.attempts + excluded.attempts)"
    " SELECT COUNT(*) FROM taken"
)


class PostgresRollupWriter:
    """Adds records not rolled up yet to the hourly sums; any number of instances may run it."""

    def __init__(self, pool: Any, chunk: int = CHUNK) -> None:
        self._pool = pool
        self._chunk = chunk

    async def step(self) -> int:
        """Roll up one chunk; returns how many records it covered (0: up to date, or another
        instance is rolling up right now)."""
        with unavailable_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(f"SELECT pg_try_advisory_xact_lock({LOCK})"):
                    return 0
                return int(await conn.fetchval(_STEP, self._chunk))

    async def catch_up(self) -> int:
        """Step until up to date; returns the number of records covered."""
        total = 0
        while covered := await self.step():
            total += covered
        return total
