"""The baseline cost a request is recorded with, and told in `x-faregate-baseline-cost-usd`: the
same usage, prompt-cache counts included, at the baseline model's prices (savings = baseline -
cost)."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

from faregate.server.exchange import Exchange
from faregate.types import Price, Usage

GPT4O = Price(Decimal("2.50"), Decimal(10), cache_read=Decimal("1.25"))


def test_a_request_served_by_the_baseline_model_saves_nothing_with_cached_tokens() -> None:
    """800k of the 1M prompt tokens were cache reads, billed at 1.25 instead of 2.50: the baseline
    model bills the same usage the same way, so nothing was saved by the gateway."""
    exchange = Exchange.begin(cast(Any, SimpleNamespace(headers={})), GPT4O)
    served_by = cast(
        Any, SimpleNamespace(model=SimpleNamespace(name="gpt-4o"), offer=SimpleNamespace(provider="p"))
    )
    usage = Usage(1_000_000, 100_000, cache_read_tokens=800_000)
    exchange.settled(served_by, usage, GPT4O.cost(usage))
    exchange.finished()
    assert exchange.record.cost_usd == Decimal("2.5")
    assert exchange.record.baseline_cost_usd == exchange.record.cost_usd
    assert (
        exchange.headers["x-faregate-baseline-cost-usd"] == exchange.headers["x-faregate-cost-usd"] == "2.5"
    )


def test_a_cache_hit_saves_the_baseline_cost_of_its_usage_cache_counts_included() -> None:
    from faregate.cache.service import CachedAnswer

    exchange = Exchange.begin(cast(Any, SimpleNamespace(headers={})), GPT4O)
    usage = Usage(1_000_000, 0, cache_read_tokens=1_000_000)
    exchange.from_cache(CachedAnswer("hit", {}, "gpt-4o", "p", usage))
    exchange.finished()
    assert exchange.record.baseline_cost_usd == Decimal("1.25")
    assert exchange.headers["x-faregate-baseline-cost-usd"] == "1.25"
    assert exchange.headers["x-faregate-cost-usd"] == "0"


def test_a_request_without_an_answer_has_no_baseline_cost_and_says_none() -> None:
    from faregate.errors import InvalidRequest

    exchange = Exchange.begin(cast(Any, SimpleNamespace(headers={})), GPT4O)
    exchange.failed(InvalidRequest("bad"))
    exchange.finished()
    assert exchange.record.baseline_cost_usd == 0
    assert "x-faregate-baseline-cost-usd" not in exchange.headers
