"""The SQL pieces of store/postgres/analytics.py: slices as WHERE conditions, groups, histogram buckets,
and which hours the rollups answer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from faregate.store.analytics_rows import LATENCY_STEPS, LATENCY_TOP_STEP, Dimension, Slice
from faregate.store.analytics_sql import MIN_ROLLUP_HOURS, rollup_dimension
from faregate.store.postgres.rollup import PENDING
from faregate.store.record_sums import HOUR

# SQL and its parameters.
Part = tuple[str, list[Any]]


def numbered(sql: str) -> str:
    """Write the queries with SQLite's `?` and number them for asyncpg ($1, $2, ...). None of the
    SQL here has a literal '?' (no jsonb ? operator either)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def latency_bucket(column: str) -> str:
    """analytics_rows.latency_bucket_sql with floor(): a CAST to integer would round here."""
    parts = [
        f"WHEN {column} < {limit:g} THEN floor({column} / {width}) * {width}"
        for limit, width in LATENCY_STEPS
    ]
    top = LATENCY_TOP_STEP
    return f"CASE {' '.join(parts)} ELSE floor({column} / {top}) * {top} END"


def rollup_hours(s: Slice, by: Dimension | None) -> tuple[int, int, str, tuple[str, ...] | None] | None:
    """(start, end, dim, values): the whole hours [start, end) that rollup rows of `dim`
    (restricted to `values`) answer for this slice grouped by `by`; None: read the records."""
    start = math.ceil(s.since / HOUR) * HOUR
    end = math.floor(s.until / HOUR) * HOUR
    chosen = rollup_dimension(s, by)
    if chosen is None or end - start < MIN_ROLLUP_HOURS * HOUR:
        return None
    return start, end, chosen[0], chosen[1]


def with_rollup(
    s: Slice, start: int, end: int, rolled: Part, raw: Callable[[Slice, str], Part]
) -> list[Part]:
    """The rollup's whole hours, the records of those hours still pending, and the edges."""
    parts = [rolled, raw(replace(s, since=start, until=end), f" AND {PENDING}")]
    if s.since < start:
        parts.append(raw(replace(s, until=start), ""))
    if end < s.until:
        parts.append(raw(replace(s, since=end), ""))
    return parts
