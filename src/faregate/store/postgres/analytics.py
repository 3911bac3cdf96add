"""The dashboard's and the alerts' queries on the shared PostgreSQL store (see store/sqlite/analytics.py).

Same questions, same answers as SQLiteAnalytics for the same records (tests/test_analytics_parity.py),
and read the same way: whole hours of a range of two hours or more from the hourly rollups
(store/postgres/rollup.py), the partial hours at its edges and the records not rolled up yet from
request_records, in one statement, so one snapshot: exact whether or not the rollup is current.
Raw scans read the covering index `request_records_dashboard` (migration 5), retries and
fallbacks the partial index `request_records_eventful`; the records not rolled up yet are
found through the small `rollup_pending` queue.

Where the SQL differs from SQLite's:
- attempts is JSON text: `attempts::jsonb` with jsonb_array_length / -> / ->> /
  jsonb_array_elements WITH ORDINALITY in place of json_array_length / json_extract / json_each;
- CAST(x AS INTEGER) rounds in PostgreSQL, so buckets use floor();
- text ordering uses COLLATE "C" (byte order, as SQLite's BINARY), whatever the database locale;
- LIKE is case-sensitive in PostgreSQL: search uses ILIKE, as SQLite's LIKE ignores ASCII case;
- the latency sample's evenly spaced ids come from generate_series, not WITH RECURSIVE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import asyncpg

from faregate.store.analytics_rows import (
    Dimension,
    FeedbackRow,
    GroupTotals,
    LatencyRow,
    ReliabilityRow,
    Slice,
    Totals,
    Traffic,
)
from faregate.store.analytics_sql import (
    RECENT_COLUMNS,
    RECENT_NAMES,
    SAMPLE_SIZE,
    SEARCHED,
    SERVED,
    TOTAL_NAMES,
    UNGROUPED,
    feedback_rows,
    group_expr,
    latency_rows,
    like_pattern,
    marks,
    reliability_rows,
    slice_where,
    totals_of,
    traffic_rows,
    ungroup,
)
from faregate.store.postgres.analytics_sql import Part, latency_bucket, numbered, rollup_hours, with_rollup
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.rollup import EVENT_COLUMNS, EVENTFUL, FAILED_ATTEMPTS
from faregate.store.protocols import StoreUnavailable
from faregate.store.record_sums import HOUR, TOTAL_COLUMNS, TRAFFIC_COLUMNS

# A pool of its own, apart from the store's: a slow dashboard query never holds a connection
# the record writer or a key lookup is waiting for.
POOL_SIZE = 4

_SUM_NAMES = ", ".join(f"SUM({name})" for name in TOTAL_NAMES)


class PostgresAnalytics:
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
            pool = await asyncpg.create_pool(
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

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with unavailable_errors():
                return list(await self._pool.fetch(numbered(sql), *params))
        except asyncpg.UndefinedTableError as exc:
            # Only a reader opened beside the store can see this: the store migrates first.
            raise StoreUnavailable("no request records in PostgreSQL: no gateway has used it yet") from exc

    @staticmethod
    def _source(
        s: Slice, by: Dimension | None, columns: tuple[tuple[str, str], ...], raw_filter: str = ""
    ) -> tuple[str, list[Any]]:
        """A subquery `src` of rows (grp, t, <columns>) whose sums per group are the slice's
        figures: one row per record, or one per rollup hour where the rollup can answer."""
        selected = ", ".join(f"{expr} AS {name}" for name, expr in columns)

        def raw(part: Slice, extra: str = "") -> Part:
            where, params = slice_where(part)
            sql = (
                f"SELECT {group_expr(by)} AS grp, created_at AS t, {selected} FROM request_records"
                f" WHERE {where}{raw_filter}{extra}"
            )
            return sql, params

        plan = rollup_hours(s, by)
        if plan is None:
            parts = [raw(s)]
        else:
            start, end, dim, values = plan
            names = ", ".join(name for name, _ in columns)
            value_filter = "" if values is None else f" AND value IN ({marks(values)})"
            rolled = (
                f"SELECT {'value' if by else UNGROUPED} AS grp, bucket AS t, {names} FROM rollup_hourly"
                f" WHERE dim = ? AND bucket >= ? AND bucket < ?{value_filter}",
                [dim, start, end, *(values or ())],
            )
            parts = with_rollup(s, start, end, rolled, raw)
        sql = "(" + " UNION ALL ".join(q for q, _ in parts) + ") AS src"
        return sql, [p for _, params in parts for p in params]

    # --- money and volume -------------------------------------------------------------------

    async def totals(self, s: Slice) -> Totals:
        source, params = self._source(s, None, TOTAL_COLUMNS)
        rows = await self._rows(f"SELECT {_SUM_NAMES} FROM {source}", params)
        return totals_of(tuple(rows[0]))

    async def breakdown(self, s: Slice, by: Dimension, limit: int = 100) -> list[GroupTotals]:
        """Totals per model, provider, key or route; the most expensive first."""
        source, params = self._source(s, by, TOTAL_COLUMNS)
        rows = await self._rows(
            f"SELECT grp, {_SUM_NAMES} FROM {source} GROUP BY grp"
            ' ORDER BY SUM(cost_nanousd) DESC, SUM(requests) DESC, grp COLLATE "C" LIMIT ?',
            [*params, limit],
        )
        groups = [GroupTotals(ungroup(row[0]), totals_of(tuple(row)[1:])) for row in rows]
        if by == "key":
            names = await self.key_labels([g.group for g in groups if g.group is not None])
            for g in groups:
                g.label = names.get(g.group or "")
        return groups

    async def series(self, s: Slice, bucket_s: int) -> list[GroupTotals]:
        """Totals per time bucket aligned to the epoch; the group is the bucket's start in unix
        seconds. Empty buckets are left out. Buckets that are not whole hours read request_records
        only."""
        if bucket_s % HOUR:
            where, params = slice_where(s)
            values = ", ".join(f"{expr} AS {name}" for name, expr in TOTAL_COLUMNS)
            source = f"(SELECT created_at AS t, {values} FROM request_records WHERE {where}) AS src"
        else:
            source, params = self._source(s, None, TOTAL_COLUMNS)
        rows = await self._rows(
            f"SELECT floor(t / ?)::bigint AS b, {_SUM_NAMES} FROM {source} GROUP BY b ORDER BY b",
            [float(bucket_s), *params],
        )
        return [GroupTotals(str(int(row[0]) * bucket_s), totals_of(tuple(row)[1:])) for row in rows]

    # --- speed --------------------------------------------------------------------------------

    async def _id_span(self, s: Slice) -> tuple[int, int] | None:
        """Ids of the first and the last record of the time range (two index probes)."""
        span = "created_at >= ? AND created_at < ?"
        rows = await self._rows(
            f"SELECT (SELECT id FROM request_records WHERE {span} ORDER BY created_at LIMIT 1),"
            f" (SELECT id FROM request_records WHERE {span} ORDER BY created_at DESC LIMIT 1)",
            [float(s.since), float(s.until)] * 2,
        )
        first, last = rows[0][0], rows[0][1]
        if first is None or last is None:
            return None
        return min(int(first), int(last)), max(int(first), int(last))

    async def latency(self, s: Slice, by: Dimension | None) -> tuple[list[LatencyRow], int]:
        """p50/p95/p99 of latency and time to first token per group (4xx left out), and the
        sampling step (1: every record was read; n: every n-th id), as on SQLite: the same
        histogram, and beyond SAMPLE_SIZE records the same evenly spaced ids."""
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
                f"WITH picked AS MATERIALIZED ({picked} FROM generate_series(?::bigint, ?::bigint, ?::bigint)"
                f" AS ids(i) JOIN request_records ON request_records.id = ids.i WHERE {where} AND {SERVED})"
            )
            params = [lo, hi, step, *params]
        sql = (
            f"{with_clause} SELECT grp, 0 AS kind, {latency_bucket('latency_ms')} AS bucket, COUNT(*)"
            " FROM picked GROUP BY grp, bucket UNION ALL"
            f" SELECT grp, 1 AS kind, {latency_bucket('ttft_ms')} AS bucket, COUNT(*)"
            " FROM picked WHERE ttft_ms IS NOT NULL GROUP BY grp, bucket"
        )
        return latency_rows(await self._rows(sql, params)), step

    # --- reliability --------------------------------------------------------------------------

    async def reliability(self, s: Slice, by: Dimension | None) -> list[ReliabilityRow]:
        """Requests, errors, empty answers, fallbacks and retries per group."""
        source, params = self._source(s, by, TOTAL_COLUMNS)
        totals = await self._rows(
            f"SELECT grp, SUM(requests), SUM(errors), SUM(empty_responses) FROM {source} GROUP BY grp", params
        )
        # Only the eventful records' attempts are parsed for retries and fallbacks.
        source, params = self._source(s, by, EVENT_COLUMNS, f" AND {EVENTFUL}")
        events = await self._rows(
            f"SELECT grp, SUM(fallbacks), SUM(retried) FROM {source} GROUP BY grp", params
        )
        return reliability_rows(totals, events)

    async def failed_attempts_by_offer(self, s: Slice, limit: int = 50) -> list[tuple[str, str, str, int]]:
        """(provider, model, outcome, count) of every failed upstream attempt in the slice: which
        provider is failing, and how (also for requests that a fallback then saved)."""

        def raw(part: Slice, extra: str = "") -> Part:
            where, params = slice_where(part)
            return FAILED_ATTEMPTS.format(t="1 AS attempts", where=where + extra), params

        plan = rollup_hours(s, None)
        # The failures rollup has no dimensions: a narrowed slice reads the records.
        if plan is None or plan[3] is not None:
            parts = [raw(s)]
        else:
            start, end, _, _ = plan
            rolled: Part = (
                "SELECT provider, model, outcome, attempts FROM rollup_failures_hourly"
                " WHERE bucket >= ? AND bucket < ?",
                [start, end],
            )
            parts = with_rollup(s, start, end, rolled, raw)
        rows = await self._rows(
            f"SELECT provider, model, outcome, SUM(attempts) FROM ({' UNION ALL '.join(q for q, _ in parts)})"
            " AS failed GROUP BY provider, model, outcome ORDER BY SUM(attempts) DESC,"
            ' provider COLLATE "C", model COLLATE "C", outcome COLLATE "C" LIMIT ?',
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
        # float8 averages, as SQLite's AVG (a numeric average could differ in the last digit).
        rows = await self._rows(
            "SELECT grp, COUNT(*), COUNT(*) FILTER (WHERE thumb = 'up'),"
            " COUNT(*) FILTER (WHERE thumb = 'down'),"
            " COUNT(rating), AVG(rating::float8), AVG(score)"
            f" FROM (SELECT {group_expr(by, 'r.')} AS grp, f.thumb, f.rating, f.score"
            " FROM feedback AS f JOIN request_records AS r ON r.request_id = f.request_id"
            f" WHERE {where}) AS j"
            ' GROUP BY grp ORDER BY AVG(score), grp COLLATE "C"',
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
            params.append(float(before))
        if search:
            pattern = like_pattern(search)
            likes = " OR ".join(f"{column} ILIKE ? ESCAPE '\\'" for column in SEARCHED)
            key_ids = "key_id IN (SELECT id FROM api_keys WHERE name ILIKE ? ESCAPE '\\')"
            where += f" AND (request_id = ? OR {likes} OR {key_ids})"
            params += [search, *([pattern] * len(SEARCHED)), pattern]
        rows = await self._rows(
            f"SELECT {RECENT_COLUMNS} FROM request_records WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [dict(zip(RECENT_NAMES, tuple(row), strict=True)) for row in rows]

    async def traffic(self, s: Slice, by: Dimension = "model") -> list[Traffic]:
        """Per group, the most expensive first: requests, cache hits, billed tokens, and the cost
        summed exactly from cost_usd as NUMERIC (read from request_records)."""
        where, params = slice_where(s)
        selected = ", ".join(f"{expr} AS {name}" for name, expr in TRAFFIC_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name, _ in TRAFFIC_COLUMNS)
        rows = await self._rows(
            f"SELECT grp, {sums}, SUM(cost_usd::numeric) FROM (SELECT {group_expr(by)} AS grp,"
            f" {selected}, cost_usd FROM request_records WHERE {where}) AS src GROUP BY grp",
            params,
        )
        return traffic_rows(rows)

    async def first_record_at(self) -> float | None:
        rows = await self._rows("SELECT MIN(created_at) FROM request_records")
        value = rows[0][0]
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
        """The ids of the keys with this id or this name; the text itself when no key has it."""
        rows = await self._rows("SELECT id FROM api_keys WHERE id = ? OR name = ?", [id_or_name, id_or_name])
        return tuple(str(r[0]) for r in rows) or (id_or_name,)
