"""What the dashboard and alert queries return: plain rows (money as Decimal) and the slice asked about."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from faregate.types import Price, Usage

Dimension = Literal["model", "provider", "key", "route", "wire"]
DIMENSIONS: tuple[Dimension, ...] = ("model", "provider", "key", "route", "wire")

# Latency percentiles are read from a histogram built in SQL. Bucket width grows with the value,
# so the error stays small relative to it: 1 ms below 100 ms, 10 ms below 1 s, 100 ms below 10 s,
# 1 s above. A percentile is reported as the middle of its bucket.
LATENCY_STEPS: tuple[tuple[float, int], ...] = ((100.0, 1), (1000.0, 10), (10000.0, 100))
LATENCY_TOP_STEP = 1000


@dataclass(slots=True, frozen=True)
class Slice:
    """Records with since <= created_at < until (unix seconds), optionally narrowed to one model
    (the model used, else the one asked for), provider, route, or a set of key ids."""

    since: float
    until: float
    model: str | None = None
    provider: str | None = None
    route: str | None = None
    keys: tuple[str, ...] | None = None


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0  # 5xx: the gateway or every upstream failed
    client_errors: int = 0  # 4xx: refused (auth, bad input, budget, rate limit) or client gone
    budget_refusals: int = 0  # 402
    rate_limited: int = 0  # 429
    cost: Decimal = Decimal(0)
    baseline: Decimal = Decimal(0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_lookups: int = 0  # requests the cache was asked about (miss, hit, semantic-hit, hit-refused)
    # Hits served (a hit refused before it was served, hit-refused, is a lookup and no hit).
    cache_hits: int = 0
    semantic_hits: int = 0
    cache_saved: Decimal = Decimal(0)
    empty_responses: int = 0

    @property
    def savings(self) -> Decimal:
        return self.baseline - self.cost


@dataclass(slots=True)
class GroupTotals:
    """Totals of one group (one model, provider, key, route, or time bucket)."""

    group: str | None
    totals: Totals = field(default_factory=Totals)
    label: str | None = None


@dataclass(slots=True)
class Traffic:
    """What one group's requests used and paid, for pricing the same traffic on another model:
    tokens of the billed requests only (a cache hit costs nothing on any model), and the cost
    summed exactly from each record's decimal text (the nano-dollar sums round prices finer
    than a nano-dollar)."""

    group: str  # '' for none: by model, the requests no model served (refused or failed)
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0  # billed requests only
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal(0))

    def priced_at(self, price: Price) -> Decimal:
        return price.cost(Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens))


@dataclass(slots=True)
class Percentiles:
    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass(slots=True)
class LatencyRow:
    group: str | None
    latency: Percentiles = field(default_factory=Percentiles)
    ttft: Percentiles = field(default_factory=Percentiles)


@dataclass(slots=True)
class ReliabilityRow:
    group: str | None
    requests: int = 0
    errors: int = 0
    empty_responses: int = 0
    # Among the requests taken on (a 4xx is a refusal, whatever was tried before it):
    fallbacks: int = 0  # requests answered (or failed) by another offer than the first one tried
    retried: int = 0  # requests that called the same offer again
    failed_attempts: dict[str, int] = field(default_factory=dict)  # outcome -> count
    client_errors: int = 0  # requests refused with a 4xx (bad input, key, rate limit, credit)

    @property
    def taken_on(self) -> int:
        """The requests the gateway took on: all but its 4xx refusals (the denominator of the error,
        empty, fallback and retry rates)."""
        return self.requests - self.client_errors


@dataclass(slots=True)
class FeedbackRow:
    group: str | None
    count: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: int = 0
    avg_rating: float | None = None
    # Mean score on 0..100 (up = 100, down = 0, rating r = (r - 1) * 25).
    satisfaction: float | None = None


def bucket_width(lower: float) -> int:
    for limit, width in LATENCY_STEPS:
        if lower < limit:
            return width
    return LATENCY_TOP_STEP


def histogram_percentiles(
    buckets: Sequence[tuple[float, int]], quantiles: Sequence[float] = (0.5, 0.95, 0.99)
) -> list[float | None]:
    """Nearest-rank percentiles from (bucket lower bound, count) pairs, as bucket midpoints."""
    ordered = sorted(buckets)
    total = sum(count for _, count in ordered)
    if total == 0:
        return [None for _ in quantiles]
    out: list[float | None] = []
    for q in quantiles:
        rank = max(1, math.ceil(q * total))
        seen = 0
        for lower, count in ordered:
            seen += count
            if seen >= rank:
                out.append(lower + bucket_width(lower) / 2)
                break
    return out


def latency_bucket_sql(column: str, floor_int: Callable[[str], str]) -> str:
    """SQL for the lower bound of the histogram bucket holding `column` (see LATENCY_STEPS);
    `floor_int` is the dialect's integer floor."""
    parts = [
        f"WHEN {column} < {limit:g} THEN {floor_int(f'{column} / {width}')} * {width}"
        for limit, width in LATENCY_STEPS
    ]
    top = LATENCY_TOP_STEP
    return f"CASE {' '.join(parts)} ELSE {floor_int(f'{column} / {top}')} * {top} END"
