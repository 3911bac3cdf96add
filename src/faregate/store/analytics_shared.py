"""What the SQLite and the PostgreSQL analytics share: the columns they read, what counts as a
served request, and how a row of sums becomes Totals. Only the SQL dialects differ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from faregate.store.analytics_rows import Dimension, Slice, Totals
from faregate.store.rollup import TOTAL_COLUMNS
from faregate.store.rows import from_nanousd

# Percentiles over more records than this use an evenly spaced sample of this size.
SAMPLE_SIZE = 20_000
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
