"""What recorded traffic cost, and what the same tokens would have cost on another model.

Reads the gateway's request records read-only (a running gateway keeps writing; this never
locks it out) and sums exactly: cost_usd is stored as exact decimal text, so the actual
spend is a Decimal sum, not a SUM over floats. Re-pricing is linear in tokens, so pricing
the summed prompt and completion tokens at model X's price is exact too.

Cache hits cost nothing and would cost nothing on X either (the cache sits in front of any
model), so only the billed requests (cache miss or bypass) are re-priced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiosqlite
from rich.table import Table

from faregate.evals.projection import format_share, format_usd
from faregate.store.sqlite import DB_FILENAME
from faregate.types import Price, Usage

_BILLED = ("bypass", "miss")


@dataclass(slots=True)
class ModelTraffic:
    """Recorded traffic of one model (requests that failed outright count under the model asked for)."""

    model: str
    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0  # billed requests only
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal(0))

    def priced_at(self, price: Price) -> Decimal:
        return price.cost(Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens))


async def read_traffic(store_dir: str | Path, since: float, until: float) -> list[ModelTraffic]:
    """Per-model totals for since <= created_at < until, most expensive first."""
    path = Path(store_dir) / DB_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no request records at {path}")
    totals: dict[str, ModelTraffic] = {}
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as conn:
        cursor = await conn.execute(
            "SELECT COALESCE(model_used, model_requested), cache_status, prompt_tokens, completion_tokens,"
            " cost_usd FROM request_records WHERE created_at >= ? AND created_at < ?",
            (since, until),
        )
        async for model, cache_status, prompt, completion, cost in cursor:
            row = totals.setdefault(str(model), ModelTraffic(str(model)))
            row.requests += 1
            row.cost += Decimal(cost)
            if cache_status in _BILLED:
                row.prompt_tokens += int(prompt)
                row.completion_tokens += int(completion)
            else:
                row.cache_hits += 1
    return sorted(totals.values(), key=lambda r: (-r.cost, -r.requests, r.model))


def render(traffic: list[ModelTraffic], targets: dict[str, Price], title: str) -> Table:
    """One row per recorded model and a total; a column per target model with the re-priced cost."""
    table = Table(title=title)
    table.add_column("served by")
    for column in ("requests", "cache hits", "tokens in", "tokens out", "actual cost"):
        table.add_column(column, justify="right")
    for name in targets:
        table.add_column(f"on {name}", justify="right")
    total = ModelTraffic("total")
    for row in traffic:
        total.requests += row.requests
        total.cache_hits += row.cache_hits
        total.prompt_tokens += row.prompt_tokens
        total.completion_tokens += row.completion_tokens
        total.cost += row.cost
    for row in [*traffic, total]:
        cells = [format_usd(row.priced_at(price)) for price in targets.values()]
        if row is total:
            cells = [_with_saving(row.cost, row.priced_at(price)) for price in targets.values()]
        table.add_row(
            row.model,
            f"{row.requests:,}",
            f"{row.cache_hits:,}",
            f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}",
            format_usd(row.cost),
            *cells,
            style="bold" if row is total else None,
        )
    return table


def _with_saving(actual: Decimal, hypothetical: Decimal) -> str:
    """'$0.27461 (+56.5% vs actual)': the hypothetical cost and how it differs from what was paid."""
    if not actual:
        return format_usd(hypothetical)
    change = (hypothetical - actual) / actual
    sign = "+" if change >= 0 else "-"
    return (
        f"{format_usd(hypothetical)} ({sign}{format_share(abs(change).quantize(Decimal('0.001')))} vs actual)"
    )
