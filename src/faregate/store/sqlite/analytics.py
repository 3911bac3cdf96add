"""The dashboard's and the alerts' queries: aggregated in SQL, over rollups and indexes.

Reads go through a connection of their own, so a dashboard query never queues in front
of the record writer or a key lookup on the store's connection; SQLite in WAL mode lets
it read while they write.

Where each figure comes from:
- Sums (spend, baseline, tokens, requests, errors, cache, fallbacks, retries) over a range
  of two hours or more: whole hours from `rollup_hourly` (store/sqlite/rollup.py), plus the
  partial hours at the edges and the records not rolled up yet from request_records. The
  result is exact either way. A slice narrowed to more than one dimension (a model *and*
  a route, or grouped by one and filtered by another) reads request_records only.
- request_records is read through `request_records_dashboard`, an index that covers every
  column the sums use, so a range scan never touches the rows with their attempts JSON;
  retries and fallbacks through the partial index `request_records_eventful`.
- Percentiles: a histogram grouped in SQL (`latency_bucket_sql`) over every record of the
  range, or, beyond SAMPLE_SIZE records, over an evenly spaced sample of them (every n-th
  id), which the answer says.

Porting to PostgreSQL: the SQL is plain apart from
- JSON: json_array_length / json_extract / json_each over the attempts text become
  jsonb_array_length / ->> / jsonb_array_elements WITH ORDINALITY (store attempts as jsonb);
- CAST(x AS INTEGER) truncates in SQLite but rounds in PostgreSQL: use floor() for buckets;
- the covering index is better written `(created_at) INCLUDE (...)`, the partial index keeps
  its WHERE; percentiles could use percentile_disc (or TABLESAMPLE for the sample);
- ON CONFLICT ... DO UPDATE and WITH RECURSIVE are the same in both.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from faregate.store.analytics_rows import (
    Dimension,
    FeedbackRow,
    GroupTotals,
    LatencyRow,
    ReliabilityRow,
    Slice,
    Totals,
    Traffic,
    latency_bucket_sql,
)
from faregate.store.analytics_sql import (
    MIN_ROLLUP_HOURS,
    RECENT_COLUMNS,
    RECENT_NAMES,
    SAMPLE_SIZE,
    SEARCHED,
    SERVED,
    TOTAL_NAMES,
    feedback_rows,
    group_expr,
    latency_rows,
    like_pattern,
    marks,
    reliability_rows,
    rollup_dimension,
    slice_where,
    totals_of,
    traffic_rows,
    ungroup,
)
from faregate.store.protocols import StoreUnavailable
from faregate.store.record_sums import HOUR, TOTAL_COLUMNS, TRAFFIC_COLUMNS
from faregate.store.sqlite.rollup import (
    EVENT_COLUMNS,
    EVENTFUL,
    FAILED_ATTEMPT_GROUP,
    FAILED_ATTEMPTS_FROM,
    rolled_up_to,
)
from faregate.store.sqlite.store import BUSY_TIMEOUT_MS

EVENT_NAMES = tuple(name for name, _ in EVENT_COLUMNS)


@contextmanager
def _unavailable_on_operational_error() -> Iterator[None]:
    # As in the store: "locked", "disk I/O error" and the like are worth trying again later.
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(str(exc)) from exc


def _count_if(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


@dataclass(slots=True, frozen=True)
class _RollupPlan:
    """Whole hours [start, end) come from rollup rows of `dim` (restricted to `values`)."""

    dim: str
    values: tuple[str, ...] | None
    start: int
    end: int
    watermark: int


class _DecimalSum:
    """SQL aggregate decimal_sum(text): the exact sum of decimal texts, as text (NULLs skipped)."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return format(self.total, "f")


class SQLiteAnalytics:
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
            conn = await aiosqlite.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
        else:
            conn = await aiosqlite.connect(db_path, isolation_level=None)
        try:
            with _unavailable_on_operational_error():
                await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                # 64 MiB of page cache: the covering index of a busy day stays in memory.
                await conn.execute("PRAGMA cache_size=-65536")
                # SQLite has no exact decimal type: money text is summed by this aggregate.
                register: Callable[..., Awaitable[None]] = conn._execute
                await register(conn._conn.create_aggregate, "decimal_sum", 1, _DecimalSum)
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    @property
    def connection(self) -> aiosqlite.Connection:
        return self._conn

    async def close(self) -> None:
        await self._conn.close()

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterable[Sequence[Any]]:
        with _unavailable_on_operational_error():
            return await self._conn.execute_fetchall(sql, params)

    # --- where the sums come from ---------------------------------------------------------------

    async def _plan(self, s: Slice, by: Dimension | None) -> _RollupPlan | None:
        start = math.ceil(s.since / HOUR) * HOUR
        end = math.floor(s.until / HOUR) * HOUR
        chosen = rollup_dimension(s, by)
        if chosen is None or end - start < MIN_ROLLUP_HOURS * HOUR:
            return None
        with _unavailable_on_operational_error():
            watermark = await rolled_up_to(self._conn)
        if watermark == 0:
            return None
        return _RollupPlan(chosen[0], chosen[1], start, end, watermark)

    async def _source(
        self, s: Slice, by: Dimension | None, columns: tuple[tuple[str, str], ...], raw_filter: str = ""
    ) -> tuple[str, list[Any]]:
        """SQL for rows (grp, t, <columns>) whose sums per group are the slice's figures: one row
        per record, or one per rollup hour where the rollup can answer."""
        selected = ", ".join(f"{expr} AS {name}" for name, expr in columns)

        def raw(part: Slice, extra: str = "", extra_params: Sequence[Any] = ()) -> tuple[str, list[Any]]:
            # The records not rolled up yet are found by id (the newest few), not by time.
            where, params = slice_where(part, time_index=not extra)
            sql = (
                f"SELECT {group_expr(by)} AS grp, created_at AS t, {selected} FROM request_records"
                f" WHERE {where}{raw_filter}{extra}"
            )
            return sql, [*params, *extra_params]

        plan = await self._plan(s, by)
        if plan is None:
            return raw(s)
        names = ", ".join(name for name, _ in columns)
        value_filter = "" if plan.values is None else f" AND value IN ({marks(plan.values)})"
        grp = "value" if by else "''"
        parts = [
            (
                f"SELECT {grp} AS grp, bucket AS t, {names} FROM rollup_hourly"
                f" WHERE dim = ? AND bucket >= ? AND bucket < ?{value_filter}",
                [plan.dim, plan.start, plan.end, *(plan.values or ())],
            ),
            # Records of those hours that the rollup has not read yet.
            raw(
                replace(s, since=plan.start, until=plan.end), " AND request_records.id > ?", [plan.watermark]
            ),
        ]
        if s.since < plan.start:
            parts.append(raw(replace(s, until=plan.start)))
        if plan.end < s.until:
            parts.append(raw(replace(s, since=plan.end)))
        return " UNION ALL ".join(sql for sql, _ in parts), [p for _, params in parts for p in params]

    # --- money and volume -------------------------------------------------------------------

    async def totals(self, s: Slice) -> Totals:
        source, params = await self._source(s, None, TOTAL_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name in TOTAL_NAMES)
        rows = await self._rows(f"SELECT {sums} FROM ({source})", params)
        return totals_of(next(iter(rows)))

    async def breakdown(self, s: Slice, by: Dimension, limit: int = 100) -> list[GroupTotals]:
        """Totals per model, provider, key or route; the most expensive first."""
        source, params = await self._source(s, by, TOTAL_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name in TOTAL_NAMES)
        rows = await self._rows(
            f"SELECT grp, {sums} FROM ({source}) GROUP BY grp"
            " ORDER BY SUM(cost_nanousd) DESC, SUM(requests) DESC, grp LIMIT ?",
            [*params, limit],
        )
        groups = [GroupTotals(ungroup(row[0]), totals_of(row[1:])) for row in rows]
        if by == "key":
            names = await self.key_labels([g.group for g in groups if g.group is not None])
            for g in groups:
                g.label = names.get(g.group or "")
        return groups

    async def series(self, s: Slice, bucket_s: int) -> list[GroupTotals]:
        """Totals per time bucket (aligned to the epoch, so day buckets start at 00:00 UTC); the
        group is the bucket's start in unix seconds. Empty buckets are left out. Buckets that
        are not whole hours read request_records only."""
        if bucket_s % HOUR:
            where, params = slice_where(s)
            selected = ", ".join(f"{expr} AS {name}" for name, expr in TOTAL_COLUMNS)
            source = f"SELECT created_at AS t, {selected} FROM request_records WHERE {where}"
        else:
            source, params = await self._source(s, None, TOTAL_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name in TOTAL_NAMES)
        rows = await self._rows(
            f"SELECT CAST(t / ? AS INTEGER) AS b, {sums} FROM ({source}) GROUP BY b ORDER BY b",
            [bucket_s, *params],
        )
        return [GroupTotals(str(int(row[0]) * bucket_s), totals_of(row[1:])) for row in rows]

    # --- speed --------------------------------------------------------------------------------

    async def _id_span(self, s: Slice) -> tuple[int, int] | None:
        """Ids of the first and the last record of the time range (two index probes)."""
        first = await self._rows(
            "SELECT id FROM request_records WHERE created_at >= ? AND created_at < ?"
            " ORDER BY created_at LIMIT 1",
            [s.since, s.until],
        )
        last = await self._rows(
            "SELECT id FROM request_records WHERE created_at >= ? AND created_at < ?"
            " ORDER BY created_at DESC LIMIT 1",
            [s.since, s.until],
        )
        ids = [int(row[0]) for row in (*first, *last)]
        return (min(ids), max(ids)) if len(ids) == 2 else None

    async def latency(self, s: Slice, by: Dimension | None) -> tuple[list[LatencyRow], int]:
        """p50/p95/p99 of latency and time to first token per group (4xx left out), and the
        sampling step (1: every record was read; n: every n-th id)."""
        span = await self._id_span(s)
        if span is None:
            return [], 1
        lo, hi = span
        step = max(1, math.ceil((hi - lo + 1) / SAMPLE_SIZE))
        where, params = slice_where(s)
        picked = f"SELECT {group_expr(by)} AS grp, latency_ms, ttft_ms"
        if step == 1:
            with_clause = (
                f"WITH picked AS MATERIALIZED ({picked} FROM request_records WHERE {where} AND {SERVED})"
            )
        else:
            # Evenly spaced ids, looked up by primary key: a fixed cost, whatever the range.
            with_clause = (
                "WITH RECURSIVE ids(i) AS (SELECT ? UNION ALL SELECT i + ? FROM ids WHERE i + ? <= ?),"
                f" picked AS MATERIALIZED ({picked} FROM ids"
                f" JOIN request_records ON request_records.id = ids.i WHERE {where} AND {SERVED})"
            )
            params = [lo, step, step, hi, *params]
        sql = (
            f"{with_clause} SELECT grp, 0, {latency_bucket_sql('latency_ms')} AS bucket, COUNT(*)"
            " FROM picked GROUP BY grp, bucket UNION ALL"
            f" SELECT grp, 1, {latency_bucket_sql('ttft_ms')} AS bucket, COUNT(*)"
            " FROM picked WHERE ttft_ms IS NOT NULL GROUP BY grp, bucket"
        )
        return latency_rows(await self._rows(sql, params)), step

    # --- reliability --------------------------------------------------------------------------

    async def reliability(self, s: Slice, by: Dimension | None) -> list[ReliabilityRow]:
        """Requests, errors, empty answers, fallbacks and retries per group."""
        source, params = await self._source(s, by, TOTAL_COLUMNS)
        totals = await self._rows(
            f"SELECT grp, SUM(requests), SUM(errors), SUM(empty_responses) FROM ({source}) GROUP BY grp",
            params,
        )
        source, params = await self._source(s, by, EVENT_COLUMNS, f" AND {EVENTFUL}")
        events = await self._rows(
            f"SELECT grp, SUM(fallbacks), SUM(retried) FROM ({source}) GROUP BY grp", params
        )
        return reliability_rows(totals, events)

    async def failed_attempts_by_offer(self, s: Slice, limit: int = 50) -> list[tuple[str, str, str, int]]:
        """(provider, model, outcome, count) of every failed upstream attempt in the slice: which
        provider is failing, and how (also for requests that a fallback then saved)."""

        def raw(part: Slice, extra: str = "", extra_params: Sequence[Any] = ()) -> tuple[str, list[Any]]:
            where, params = slice_where(part, time_index=not extra)
            from_clause = FAILED_ATTEMPTS_FROM.format(where=where + extra)
            return f"SELECT {FAILED_ATTEMPT_GROUP}, 1 AS attempts {from_clause}", [*params, *extra_params]

        plan = await self._plan(s, None)
        if plan is None or plan.values is not None:
            parts = [raw(s)]
        else:
            parts = [
                (
                    "SELECT provider, model, outcome, attempts FROM rollup_failures_hourly"
                    " WHERE bucket >= ? AND bucket < ?",
                    [plan.start, plan.end],
                ),
                raw(
                    replace(s, since=plan.start, until=plan.end),
                    " AND request_records.id > ?",
                    [plan.watermark],
                ),
            ]
            if s.since < plan.start:
                parts.append(raw(replace(s, until=plan.start)))
            if plan.end < s.until:
                parts.append(raw(replace(s, since=plan.end)))
        rows = await self._rows(
            f"SELECT provider, model, outcome, SUM(attempts) FROM ({' UNION ALL '.join(q for q, _ in parts)})"
            " GROUP BY provider, model, outcome"
            " ORDER BY SUM(attempts) DESC, provider, model, outcome LIMIT ?",
            [*(p for _, params in parts for p in params), limit],
        )
        return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    # --- quality ------------------------------------------------------------------------------

    async def feedback(
        self, s: Slice, by: Dimension | None, *, by_feedback_time: bool = False
    ) -> list[FeedbackRow]:
        """Feedback joined to its request, per group, the least liked first. The slice's time
        range applies to when the request was made, or with by_feedback_time to when the
        feedback was given."""
        where, params = slice_where(s, "r.", "f." if by_feedback_time else None)
        up, down = _count_if("f.thumb = 'up'"), _count_if("f.thumb = 'down'")
        # Feedback is the small side: CROSS JOIN makes SQLite walk it and look each record up.
        rows = await self._rows(
            f"SELECT {group_expr(by, 'r.')} AS grp, COUNT(*), {up}, {down},"
            " COUNT(f.rating), AVG(f.rating), AVG(f.score)"
            " FROM feedback AS f CROSS JOIN request_records AS r"
            f" WHERE r.request_id = f.request_id AND {where} GROUP BY grp ORDER BY AVG(f.score), grp",
            params,
        )
        return feedback_rows(rows)

    # --- requests -----------------------------------------------------------------------------

    async def recent(
        self, s: Slice, *, search: str | None = None, limit: int = 50, before: float | None = None
    ) -> list[dict[str, Any]]:
        """The newest requests of the slice (older than `before`), optionally only those whose
        request id is `search` or whose model, route, provider, key (id or name), cache status
        or error contains it (case-insensitive). attempts stays JSON text."""
        where, params = slice_where(s)
        if before is not None:
            where += " AND created_at < ?"
            params.append(before)
        if search:
            pattern = like_pattern(search)
            likes = " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in SEARCHED)
            key_ids = "key_id IN (SELECT id FROM api_keys WHERE name LIKE ? ESCAPE '\\')"
            where += f" AND (request_id = ? OR {likes} OR {key_ids})"
            params += [search, *([pattern] * len(SEARCHED)), pattern]
        rows = await self._rows(
            f"SELECT {RECENT_COLUMNS} FROM request_records WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [dict(zip(RECENT_NAMES, row, strict=True)) for row in rows]

    async def traffic(self, s: Slice, by: Dimension = "model") -> list[Traffic]:
        """Per group, the most expensive first: requests, cache hits, billed tokens, and the cost
        summed exactly from cost_usd (read from request_records)."""
        where, params = slice_where(s)
        selected = ", ".join(f"{expr} AS {name}" for name, expr in TRAFFIC_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name, _ in TRAFFIC_COLUMNS)
        rows = await self._rows(
            f"SELECT grp, {sums}, decimal_sum(cost_usd) FROM (SELECT {group_expr(by)} AS grp,"
            f" {selected}, cost_usd FROM request_records WHERE {where}) GROUP BY grp",
            params,
        )
        return traffic_rows(rows)

    async def first_record_at(self) -> float | None:
        rows = await self._rows("SELECT MIN(created_at) FROM request_records")
        value = next(iter(rows))[0]
        return None if value is None else float(value)

    # --- keys ---------------------------------------------------------------------------------

    async def key_labels(self, ids: Sequence[str]) -> dict[str, str]:
        """'name (fg-abc123…)' per key id, for showing keys by name (the stored prefix ends in …)."""
        if not ids:
            return {}
        rows = await self._rows(
            f"SELECT id, name, prefix FROM api_keys WHERE id IN ({marks(ids)})", list(ids)
        )
        return {str(r[0]): f"{r[1]} ({r[2]})" for r in rows}

    async def resolve_keys(self, id_or_name: str) -> tuple[str, ...]:
        """The ids of the keys with this id or this name (names need not be unique); the text
        itself when no key has it, as records may name a key that is gone."""
        rows = await self._rows("SELECT id FROM api_keys WHERE id = ? OR name = ?", [id_or_name, id_or_name])
        return tuple(str(r[0]) for r in rows) or (id_or_name,)
