"""What recorded traffic cost, and what the same tokens would have cost on another model.

The totals come from the store (Analytics.traffic: SQLite or PostgreSQL, read-only, money
summed exactly). Re-pricing is linear in tokens, so pricing the summed prompt and completion
tokens at model X's price is exact too. Cache hits cost nothing and would cost nothing on X
either (the cache sits in front of any model), so only the billed requests are re-priced.
Embeddings traffic is not re-priced: no chat model can serve it, so on every column it keeps its
own cost (and a target that is an embedding model is priced on its input alike).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from rich.table import Table
from rich.text import Text

from faregate.cli.common import folding_column, whole_column
from faregate.evals.costs.projection import MoneyText, display_usd, format_share
from faregate.store.analytics_rows import Traffic
from faregate.types import Price

# The line of the requests no model served: refused (auth, input, budget, rate limit) or failed on
# every provider. Their cost is what failed attempts were billed (a blank 200), most often $0.
NOT_SERVED = "not served (refused or failed)"


def render(
    traffic: list[Traffic],
    targets: dict[str, Price],
    title: str,
    money: MoneyText = display_usd,
    embeds: Callable[[str], bool] = lambda _: False,
) -> Table:
    """One row per model that served, the requests none served, and a total; a column per target
    model with the re-priced cost (`embeds`: whether a served model is an embedding model, whose
    traffic keeps its own cost). Names and amounts are printed whole (print it with
    common.print_table, which widens past the terminal when they need it)."""
    kept = {row.group for row in traffic if row.group and embeds(row.group)}

    def on(row: Traffic, price: Price) -> Decimal:
        if row.group in kept:
            return row.cost
        if row.group == "total":
            return sum((on(r, price) for r in traffic), Decimal(0))
        return row.priced_at(price)

    total = Traffic("total")
    for row in traffic:
        total.requests += row.requests
        total.cache_hits += row.cache_hits
        total.prompt_tokens += row.prompt_tokens
        total.completion_tokens += row.completion_tokens
        total.cost += row.cost
    served = [row for row in traffic if row.group]
    lines = [*served, *(row for row in traffic if not row.group), total]
    numbers = [
        [
            f"{row.requests:,}",
            f"{row.cache_hits:,}",
            f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}",
            money(row.cost),
            *(
                _with_saving(row.cost, on(row, price), money)
                if row is total
                else f"{money(row.cost)} (embeddings)"
                if row.group in kept
                else money(on(row, price))
                for price in targets.values()
            ),
        ]
        for row in lines
    ]
    table = Table(title=title)
    folding_column(table, "served by", [row.group or NOT_SERVED for row in lines])
    # Only the names fold: rich, squeezing several folding columns, cut the widest past the edge.
    headings = [
        "requests",
        "cache hits",
        "tokens in",
        "tokens out",
        "actual cost",
        *(f"on {n}" for n in targets),
    ]
    for i, heading in enumerate(headings):
        whole_column(table, heading, [cells[i] for cells in numbers], justify="right")
    for row, cells in zip(lines, numbers, strict=True):
        # Text(): model names (a served one may be any name a provider lists) are not rich markup.
        table.add_row(Text(row.group or NOT_SERVED), *cells, style="bold" if row is total else None)
    return table


def _with_saving(actual: Decimal, hypothetical: Decimal, money: MoneyText) -> str:
    """'$0.2746 (+56.5% vs actual)': the hypothetical cost and how it differs from what was paid."""
    if not actual:
        return money(hypothetical)
    change = (hypothetical - actual) / actual
    sign = "+" if change >= 0 else "-"
    share = format_share(abs(change).quantize(Decimal("0.001")))
    return f"{money(hypothetical)} ({sign}{share} vs actual)"
