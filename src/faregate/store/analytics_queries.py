"""The dashboard's, the alerts' and the commands' queries, written once for SQLite and PostgreSQL.

`AnalyticsQueries` answers the Analytics protocol (store/analytics.py) in SQL; a store's analytics
class (store/sqlite/analytics.py, store/postgres/analytics.py) gives it a connection, its
`Dialect` (the few things the two databases say differently) and where the rollup stands.
tests/test_analytics_parity.py holds both to the same answers for the same records.

Where each figure comes from:
- Sums (spend, baseline, tokens, requests, errors, cache, fallbacks, retries) over a range of two
  hours or more: whole hours from `rollup_hourly`, plus the partial hours at the edges and the
  records not rolled up yet from request_records, in one statement (one snapshot), so the
  result is exact whether or not the rollup is current. A slice narrowed to more than one
  dimension (a model *and* a route, or grouped by one and filtered by another) reads
  request_records only.
- request_records is read through `request_records_dashboard`, an index that covers every column
  the sums use, so a range scan never touches the rows with their attempts JSON; retries and
  fallbacks through the partial index `request_records_eventful` (its condition word for word).
- Percentiles: a histogram grouped in SQL over every record of the range, or, beyond SAMPLE_SIZE
  records, over an evenly spaced sample of them (every n-th id), which the answer says.
- Traffic (for re-pricing): request_records only, the cost summed exactly from its decimal text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

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
    rollup_dimension,
    slice_where,
    totals_of,
    traffic_rows,
    ungroup,
)
from faregate.store.record_sums import HOUR, SERVED_MODEL, TOTAL_COLUMNS, TRAFFIC_COLUMNS

# Percentiles over more records than this use an evenly spaced sample of this size.
SAMPLE_SIZE = 20_000

# Key ids looked up per statement when labelling keys: a breakdown by key (`faregate usage --by key`)
# may list more keys than a statement takes parameters (PostgreSQL: 32,767).
KEY_LABEL_CHUNK = 10_000

# SQL (with `?` parameters) and its parameters.
Part = tuple[str, list[Any]]

_SUMS = ", ".join(f"SUM({name})" for name in TOTAL_NAMES)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What SQLite and PostgreSQL say differently in these queries."""

    # Per record: did a fallback happen, was an offer retried (columns worked out when it was made).
    event_columns: tuple[tuple[str, str], ...]
    # The condition of the partial index request_records_eventful, word for word.
    eventful: str
    # One row (provider, model, outcome, {t}) per failed attempt of the records matching {where}.
    failed_attempts: str
    # An integer floor of a non-negative number (CAST truncates in SQLite but rounds in PostgreSQL).
    floor_int: Callable[[str], str]
    # The exact sum of a column of decimal text.
    exact_sum: Callable[[str], str]
    # Evenly spaced ids lo..hi (step): (common table expressions to add, the FROM item, params).
    sample_ids: Callable[[int, int, int], tuple[str, str, list[Any]]]
    # Text ordering as SQLite's BINARY (byte order) whatever the database's locale.
    collate: str = ""
    # "{column} matches the LIKE pattern ? (escaped by \\) whatever the case", for the search. Both
    # stores fold all of Unicode, not ASCII only, so a search finds the same records on either.
    contains: Callable[[str], str] = lambda column: f"{column} ILIKE ? ESCAPE '\\'"
    # The records not rolled up yet are found by id (SQLite): keep its planner off created_at.
    pending_by_id: bool = False


class AnalyticsQueries:
    """Implements store.analytics.Analytics; a subclass gives the connection and the dialect."""

    dialect: Dialect

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _pending(self) -> Part | None:
        """The records the rollup has not read yet, as a condition to AND to a query of
        request_records, with its parameters; None when nothing is rolled up yet (read the records)."""
        raise NotImplementedError

    # --- where the sums come from ---------------------------------------------------------------

    async def _rollup_plan(self, s: Slice, by: Dimension | None) -> tuple[int, int, str, Any, Part] | None:
        """(start, end, dim, values, pending): whole hours [start, end) that rollup rows of `dim`
        (restricted to `values`) answer for this slice grouped by `by`; None: read the records."""
        start = math.ceil(s.since / HOUR) * HOUR
        end = math.floor(s.until / HOUR) * HOUR
        chosen = rollup_dimension(s, by)
        if chosen is None or end - start < MIN_ROLLUP_HOURS * HOUR:
            return None
        pending = await self._pending()
        if pending is None:
            return None
        return start, end, chosen[0], chosen[1], pending

    def _raw(self, part: Slice, select: str, pending: Part | None = None) -> Part:
        """`select` (a SELECT ... FROM ... WHERE {where}) over the slice's records; with `pending`,
        only those the rollup has not read yet."""
        by_id = pending is not None and self.dialect.pending_by_id
        where, params = slice_where(part, time_index=not by_id)
        if pending is not None:
            where += pending[0]
            params += pending[1]
        return select.format(where=where), params

    def _with_rollup(
        self, s: Slice, plan: tuple[int, int, str, Any, Part], rolled: Part, select: str
    ) -> list[Part]:
        """The rollup's whole hours, the records of those hours still pending, and the edges."""
        start, end, _, _, pending = plan
        parts = [rolled, self._raw(replace(s, since=start, until=end), select, pending)]
        if s.since < start:
            parts.append(self._raw(replace(s, until=start), select))
        if end < s.until:
            parts.append(self._raw(replace(s, since=end), select))
        return parts

    async def _source(
        self, s: Slice, by: Dimension | None, columns: tuple[tuple[str, str], ...], raw_filter: str = ""
    ) -> Part:
        """A subquery `src` of rows (grp, t, <columns>) whose sums per group are the slice's
        figures: one row per record, or one per rollup hour where the rollup can answer."""
        selected = ", ".join(f"{expr} AS {name}" for name, expr in columns)
        select = (
            f"SELECT {group_expr(by)} AS grp, created_at AS t, {selected} FROM request_records"
            f" WHERE {{where}}{raw_filter}"
        )
        plan = await self._rollup_plan(s, by)
        if plan is None:
            parts = [self._raw(s, select)]
        else:
            _, _, dim, values, _ = plan
            names = ", ".join(name for name, _ in columns)
            value_filter = "" if values is None else f" AND value IN ({marks(values)})"
            rolled = (
                f"SELECT {'value' if by else UNGROUPED} AS grp, bucket AS t, {names} FROM rollup_hourly"
                f" WHERE dim = ? AND bucket >= ? AND bucket < ?{value_filter}",
                [dim, plan[0], plan[1], *(values or ())],
            )
            parts = self._with_rollup(s, plan, rolled, select)
        return _union(parts, "src")

    # --- money and volume -------------------------------------------------------------------

    async def totals(self, s: Slice) -> Totals:
        source, params = await self._source(s, None, TOTAL_COLUMNS)
        rows = await self._rows(f"SELECT {_SUMS} FROM {source}", params)
        return totals_of(tuple(rows[0]))

    async def breakdown(self, s: Slice, by: Dimension, limit: int = 100) -> list[GroupTotals]:
        """Totals per model, provider, key or route; the most expensive first."""
        groups, _ = await self.top_groups(s, by, limit)
        return groups

    async def top_groups(self, s: Slice, by: Dimension, limit: int) -> tuple[list[GroupTotals], int]:
        """The breakdown's first `limit` groups, and how many groups the slice has in all (a top
        N that does not say there are more reads as every group)."""
        source, params = await self._source(s, by, TOTAL_COLUMNS)
        # The window counts the groups before the LIMIT cuts them: the same query, no second scan.
        rows = await self._rows(
            f"SELECT grp, {_SUMS}, COUNT(*) OVER () FROM {source} GROUP BY grp"
            f" ORDER BY SUM(cost_nanousd) DESC, SUM(requests) DESC, grp{self.dialect.collate} LIMIT ?",
            [*params, limit],
        )
        groups = [GroupTotals(ungroup(row[0]), totals_of(tuple(row)[1:-1])) for row in rows]
        total = int(rows[0][-1]) if rows else 0
        if by == "key":
            names = await self.key_labels([g.group for g in groups if g.group is not None])
            for g in groups:
                g.label = names.get(g.group or "")
        return groups, total

    async def series(self, s: Slice, bucket_s: int) -> list[GroupTotals]:
        """Totals per time bucket (aligned to the epoch, so day buckets start at 00:00 UTC); the
        group is the bucket's start in unix seconds. Empty buckets are left out. Buckets that
        are not whole hours read request_records only."""
        if bucket_s % HOUR:
            where, params = slice_where(s)
            values = ", ".join(f"{expr} AS {name}" for name, expr in TOTAL_COLUMNS)
            source = f"(SELECT created_at AS t, {values} FROM request_records WHERE {where}) AS src"
        else:
            source, params = await self._source(s, None, TOTAL_COLUMNS)
        rows = await self._rows(
            f"SELECT {self.dialect.floor_int('t / ?')} AS b, {_SUMS} FROM {source} GROUP BY b ORDER BY b",
            [float(bucket_s), *params],
        )
        return [GroupTotals(str(int(row[0]) * bucket_s), totals_of(tuple(row)[1:])) for row in rows]

    async def traffic(self, s: Slice, by: Dimension = "model") -> list[Traffic]:
        """Per group, the most expensive first: requests, cache hits, billed tokens, and the cost
        summed exactly from cost_usd (request_records only: the rollups keep nano-dollars). By
        model, the model that served: requests none served are the group ''."""
        where, params = slice_where(s)
        selected = ", ".join(f"{expr} AS {name}" for name, expr in TRAFFIC_COLUMNS)
        sums = ", ".join(f"SUM({name})" for name, _ in TRAFFIC_COLUMNS)
        grp = SERVED_MODEL if by == "model" else group_expr(by)
        rows = await self._rows(
            f"SELECT grp, {sums}, {self.dialect.exact_sum('cost_usd')} FROM (SELECT {grp} AS grp,"
            f" {selected}, cost_usd FROM request_records WHERE {where}) AS src GROUP BY grp",
            params,
        )
        return traffic_rows(rows)

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
        sampling step (1: every record was read; n: every n-th id)."""
        span = await self._id_span(s)
        if span is None:
            return [], 1
        lo, hi = span
        step = max(1, math.ceil((hi - lo + 1) / SAMPLE_SIZE))
        where, params = slice_where(s)
        picked = f"SELECT {group_expr(by)} AS grp, latency_ms, ttft_ms"
        if step == 1:
            ctes = f"picked AS MATERIALIZED ({picked} FROM request_records WHERE {where} AND {SERVED})"
        else:
            # Evenly spaced ids, looked up by primary key: a fixed cost, whatever the range.
            ids_ctes, ids, id_params = self.dialect.sample_ids(lo, hi, step)
            ctes = (
                f"{ids_ctes}picked AS MATERIALIZED ({picked} FROM {ids}"
                f" JOIN request_records ON request_records.id = ids.i WHERE {where} AND {SERVED})"
            )
            params = [*id_params, *params]
        floor_int = self.dialect.floor_int
        sql = (
            f"WITH {ctes} SELECT grp, 0 AS kind, {latency_bucket_sql('latency_ms', floor_int)} AS bucket,"
            " COUNT(*) FROM picked GROUP BY grp, bucket UNION ALL"
            f" SELECT grp, 1 AS kind, {latency_bucket_sql('ttft_ms', floor_int)} AS bucket, COUNT(*)"
            " FROM picked WHERE ttft_ms IS NOT NULL GROUP BY grp, bucket"
        )
        return latency_rows(await self._rows(sql, params)), step

    # --- reliability --------------------------------------------------------------------------

    async def reliability(self, s: Slice, by: Dimension | None) -> list[ReliabilityRow]:
        """Requests, errors, empty answers, refusals, fallbacks and retries per group."""
        source, params = await self._source(s, by, TOTAL_COLUMNS)
        totals = await self._rows(
            f"SELECT grp, SUM(requests), SUM(errors), SUM(empty_responses), SUM(client_errors) FROM {source}"
            " GROUP BY grp",
            params,
        )
        # Only the eventful records' attempts are parsed for retries and fallbacks.
        dialect = self.dialect
        source, params = await self._source(s, by, dialect.event_columns, f" AND {dialect.eventful}")
        events = await self._rows(
            f"SELECT grp, SUM(fallbacks), SUM(retried) FROM {source} GROUP BY grp", params
        )
        return reliability_rows(totals, events)

    async def failed_attempts_by_offer(self, s: Slice, limit: int = 50) -> list[tuple[str, str, str, int]]:
        """(provider, model, outcome, count) of every failed upstream attempt in the slice: which
        provider is failing, and how (also for requests that a fallback then saved)."""
        select = self.dialect.failed_attempts.format(t="1 AS attempts", where="{where}")
        plan = await self._rollup_plan(s, None)
        # The failures rollup has no dimensions: a narrowed slice reads the records.
        if plan is None or plan[3] is not None:
            parts = [self._raw(s, select)]
        else:
            rolled: Part = (
                "SELECT provider, model, outcome, attempts FROM rollup_failures_hourly"
                " WHERE bucket >= ? AND bucket < ?",
                [plan[0], plan[1]],
            )
            parts = self._with_rollup(s, plan, rolled, select)
        source, params = _union(parts, "failed")
        c = self.dialect.collate
        rows = await self._rows(
            f"SELECT provider, model, outcome, SUM(attempts) FROM {source} GROUP BY provider, model, outcome"
            f" ORDER BY SUM(attempts) DESC, provider{c}, model{c}, outcome{c} LIMIT ?",
            [*params, limit],
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
        # Feedback is the small side: CROSS JOIN makes SQLite walk it and look each record up.
        # Averages over DOUBLE PRECISION in both (a numeric average could differ in the last digit).
        rows = await self._rows(
            "SELECT grp, COUNT(*), SUM(CASE WHEN thumb = 'up' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN thumb = 'down' THEN 1 ELSE 0 END), COUNT(rating),"
            " AVG(CAST(rating AS DOUBLE PRECISION)), AVG(score)"
            f" FROM (SELECT {group_expr(by, 'r.')} AS grp, f.thumb, f.rating, f.score"
            " FROM feedback AS f CROSS JOIN request_records AS r"
            f" WHERE r.request_id = f.request_id AND {where}) AS j"
            f" GROUP BY grp ORDER BY AVG(score), grp{self.dialect.collate}",
            params,
        )
        return feedback_rows(rows)

    # --- requests -----------------------------------------------------------------------------

    async def recent(
        self,
        s: Slice,
        *,
        search: str | None = None,
        limit: int = 50,
        before: float | None = None,
        before_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest requests of the slice (older than `before`, or with `before_id` listed after
        that request: the cursor of the page before), optionally only those whose request id is
        `search` or whose model, route, provider, key (id or name), cache status or error
        contains it (case-insensitive). attempts stays JSON text."""
        where, params = slice_where(s)
        if before is not None and before_id:
            # Records that share the time of the last one shown follow it in written order (id):
            # a cursor by time alone skipped those that did not fit on its page.
            where += (
                " AND (created_at < ? OR (created_at = ? AND request_records.id <"
                " (SELECT b.id FROM request_records AS b WHERE b.request_id = ?)))"
            )
            params += [float(before), float(before), before_id]
        elif before is not None:
            where += " AND created_at < ?"
            params.append(float(before))
        if search:
            pattern, contains = like_pattern(search), self.dialect.contains
            likes = " OR ".join(contains(column) for column in SEARCHED)
            key_ids = f"key_id IN (SELECT id FROM api_keys WHERE {contains('name')})"
            where += f" AND (request_id = ? OR {likes} OR {key_ids})"
            params += [search, *([pattern] * len(SEARCHED)), pattern]
        rows = await self._rows(
            f"SELECT {RECENT_COLUMNS} FROM request_records WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [dict(zip(RECENT_NAMES, tuple(row), strict=True)) for row in rows]

    async def first_record_at(self) -> float | None:
        rows = await self._rows("SELECT MIN(created_at) FROM request_records")
        value = rows[0][0]
        return None if value is None else float(value)

    # --- keys ---------------------------------------------------------------------------------

    async def key_labels(self, ids: Sequence[str]) -> dict[str, str]:
        """'name (fg-abc123…)' per key id, for showing keys by name (the stored prefix ends in …)."""
        labels: dict[str, str] = {}
        for start in range(0, len(ids), KEY_LABEL_CHUNK):
            chunk = list(ids[start : start + KEY_LABEL_CHUNK])
            rows = await self._rows(
                f"SELECT id, name, prefix FROM api_keys WHERE id IN ({marks(chunk)})", chunk
            )
            labels.update((str(r[0]), f"{r[1]} ({r[2]})") for r in rows)
        return labels

    async def resolve_keys(self, id_or_name: str) -> tuple[str, ...]:
        """The ids of the keys with this id or this name (names need not be unique); the text
        itself when no key has it, as records may name a key that is gone."""
        rows = await self._rows("SELECT id FROM api_keys WHERE id = ? OR name = ?", [id_or_name, id_or_name])
        return tuple(str(r[0]) for r in rows) or (id_or_name,)


def _union(parts: list[Part], alias: str) -> Part:
    sql = "(" + " UNION ALL ".join(q for q, _ in parts) + f") AS {alias}"
    return sql, [p for _, params in parts for p in params]
