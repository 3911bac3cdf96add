"""The dialect-neutral pieces of the analytics queries (store/analytics_queries.py): the columns
they read, what counts as a served request, a slice as a WHERE condition, and how rows of sums
become Totals and the other answers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from faregate.store.analytics_rows import (
    Dimension,
    FeedbackRow,
    LatencyRow,
    Percentiles,
    ReliabilityRow,
    Slice,
    Totals,
    Traffic,
    histogram_percentiles,
)
from faregate.store.record_sums import GROUP_SQL, TOTAL_COLUMNS
from faregate.store.rows import from_nanousd

# 4xx are refusals (auth, bad input, budget, rate limit) or clients that left: instant, and
# nothing to do with how fast the service is, so latency figures leave them out.
SERVED = "(status < 400 OR status >= 500)"
RECENT_COLUMNS = (
    "request_id, created_at, key_id, model_requested, model_used, provider, route, status, stream, "
    "prompt_tokens, completion_tokens, cost_usd, baseline_cost_usd, latency_ms, ttft_ms, "
    "empty_response, cache_status, error, attempts"
)
RECENT_NAMES = tuple(name.strip() for name in RECENT_COLUMNS.split(","))
# Text columns the recent-requests search looks in.
SEARCHED = ("model_used", "model_requested", "route", "provider", "key_id", "cache_status", "error")
TOTAL_NAMES = tuple(name for name, _ in TOTAL_COLUMNS)


def ungroup(value: Any) -> str | None:
    # '' stands for "none" (no key, no route, no provider reached) in groups.
    return None if value in (None, "") else str(value)


def totals_of(values: Sequence[Any]) -> Totals:
    v = [0 if x is None else int(x) for x in values]
    return Totals(
        requests=v[0],
        errors=v[1],
        client_errors=v[2],
        budget_refusals=v[3],
        rate_limited=v[4],
        cost=from_nanousd(v[5]),
        baseline=from_nanousd(v[6]),
        prompt_tokens=v[7],
        completion_tokens=v[8],
        cache_lookups=v[9],
        cache_hits=v[10],
        semantic_hits=v[11],
        cache_saved=from_nanousd(v[12]),
        empty_responses=v[13],
    )


# Ranges shorter than this read request_records only: the rollup would save little.
MIN_ROLLUP_HOURS = 2


def rollup_dimension(s: Slice, by: Dimension | None) -> tuple[str, tuple[str, ...] | None] | None:
    """The rollup dimension that answers this slice grouped by `by`, or None (read raw)."""
    filters: dict[str, tuple[str, ...]] = {
        dim: (value,)
        for dim, value in (("model", s.model), ("provider", s.provider), ("route", s.route))
        if value is not None
    }
    if s.keys is not None:
        filters["key"] = s.keys
    if not filters:
        return (by or ""), None
    if len(filters) == 1:
        ((dim, values),) = filters.items()
        if by is None or by == dim:
            return dim, values
    return None


def traffic_rows(rows: Iterable[Sequence[Any]]) -> list[Traffic]:
    """(group, requests, cache hits, billed prompt, billed completion, exact cost) rows ->
    Traffic, the most expensive first (ties: the busiest, then by name)."""
    out = [
        Traffic(
            group=str(ungroup(row[0]) or ""),
            requests=int(row[1]),
            cache_hits=int(row[2] or 0),
            prompt_tokens=int(row[3] or 0),
            completion_tokens=int(row[4] or 0),
            cost=Decimal(str(row[5] or 0)),
        )
        for row in rows
    ]
    return sorted(out, key=lambda t: (-t.cost, -t.requests, t.group))


def latency_rows(rows: Iterable[Sequence[Any]]) -> list[LatencyRow]:
    """(group, kind 0 latency / 1 TTFT, bucket, count) histogram rows -> percentiles per group,
    the busiest first; ties by name, so that both stores list them alike."""
    histograms: dict[tuple[str | None, int], list[tuple[float, int]]] = {}
    for grp_value, kind, bucket, count in rows:
        histograms.setdefault((ungroup(grp_value), int(kind)), []).append((float(bucket), int(count)))
    out: dict[str | None, LatencyRow] = {}
    for (group, kind), buckets in histograms.items():
        p50, p95, p99 = histogram_percentiles(buckets)
        stats = Percentiles(sum(c for _, c in buckets), p50, p95, p99)
        row = out.setdefault(group, LatencyRow(group))
        if kind == 0:
            row.latency = stats
        else:
            row.ttft = stats
    return sorted(out.values(), key=lambda r: (-r.latency.count, r.group or ""))


def reliability_rows(
    totals: Iterable[Sequence[Any]], events: Iterable[Sequence[Any]]
) -> list[ReliabilityRow]:
    """(group, requests, errors, empty, client errors) and (group, fallbacks, retried) rows -> one
    row per group, the busiest first."""
    out: dict[str | None, ReliabilityRow] = {}
    for row in totals:
        group = ungroup(row[0])
        out[group] = ReliabilityRow(
            group, int(row[1] or 0), int(row[2] or 0), int(row[3] or 0), client_errors=int(row[4] or 0)
        )
    for row in events:
        found = out.setdefault(ungroup(row[0]), ReliabilityRow(ungroup(row[0])))
        found.fallbacks, found.retried = int(row[1] or 0), int(row[2] or 0)
    return sorted(out.values(), key=lambda r: (-r.requests, r.group or ""))


def feedback_rows(rows: Iterable[Sequence[Any]]) -> list[FeedbackRow]:
    """(group, count, up, down, ratings, avg rating, avg score) rows -> FeedbackRow."""
    return [
        FeedbackRow(
            group=ungroup(row[0]),
            count=int(row[1]),
            thumbs_up=int(row[2] or 0),
            thumbs_down=int(row[3] or 0),
            ratings=int(row[4]),
            avg_rating=None if row[5] is None else float(row[5]),
            satisfaction=None if row[6] is None else float(row[6]),
        )
        for row in rows
    ]


def like_pattern(search: str) -> str:
    """`search` as a LIKE pattern that matches it anywhere, its own % _ and \\ taken literally."""
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def marks(values: Sequence[Any]) -> str:
    # An empty list (a key name that matches nothing) selects nothing, not everything.
    return ", ".join("?" for _ in values) or "NULL"


def slice_where(
    s: Slice, t: str = "", time_table: str | None = None, *, time_index: bool = True
) -> tuple[str, list[Any]]:
    """The slice as a WHERE condition on request_records (aliased `t`, e.g. "r."), with `?`
    parameters; the time range applies to `time_table`'s created_at (default: the records').
    time_index=False keeps SQLite off the created_at indexes (a unary + hides a column from its
    planner)."""
    tt = ("" if time_index else "+") + (t if time_table is None else time_table)
    conditions = [f"{tt}created_at >= ?", f"{tt}created_at < ?"]
    params: list[Any] = [float(s.since), float(s.until)]
    if s.model is not None:
        conditions.append(f"{GROUP_SQL['model'].format(t=t)} = ?")
        params.append(s.model)
    for column, value in (("provider", s.provider), ("route", s.route)):
        if value is not None:
            conditions.append(f"{t}{column} = ?")
            params.append(value)
    if s.keys is not None:
        conditions.append(f"{t}key_id IN ({marks(s.keys)})")
        params.extend(s.keys)
    return " AND ".join(conditions), params


# The group of every row when a query is not grouped.
UNGROUPED = "''"


def group_expr(by: Dimension | None, t: str = "") -> str:
    """The group a record falls in ('' when ungrouped, or when it has none)."""
    return UNGROUPED if by is None else f"COALESCE({GROUP_SQL[by].format(t=t)}, '')"
