"""The hot path's money shortcuts give the very Decimal the plain formulas gave: same value, same
digits and exponent, so the ledger, the records and the cost header are byte-identical."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from faregate.routing.attempts import billed_cost
from faregate.server.exchange import money
from faregate.store.rows import to_nanousd, usd_text
from faregate.types import MILLION, Attempt, Price, Usage

PRICES = [
    "0",
    "0.0",
    "0.1",
    "0.15",
    "0.6",
    "1",
    "1.25",
    "2.50",
    "3",
    "10",
    "15.000",
    "75",
    "0.0375",
    "0.000001",
    "1E+1",
    "2.5E+2",
    "0.07",
    "123.456789",
]


def _plain_cost(price: Price, usage: Usage) -> Decimal:
    """The formula the fast path replaced (Decimal(int) * Decimal)."""
    prompt, completion = Decimal(usage.prompt_tokens), Decimal(usage.completion_tokens)
    return (prompt * price.input + completion * price.output) / MILLION


def _same(a: Decimal, b: Decimal) -> None:
    assert a.as_tuple() == b.as_tuple()
    assert str(a) == str(b)
    assert money(a) == money(b)
    assert usd_text(a) == usd_text(b)
    assert to_nanousd(a) == to_nanousd(b)


def test_cost_without_cache_tokens_is_the_plain_formulas_to_the_digit() -> None:
    rng = random.Random(17)
    counts = [0, 1, 2, 7, 10, 12, 23, 100, 999, 1000, 4096, 128_000, 1_000_000, 10**9]
    counts += [rng.randrange(0, 2_000_000) for _ in range(40)]
    for input_price in PRICES:
        for output_price in PRICES:
            price = Price(Decimal(input_price), Decimal(output_price))
            for prompt in counts[::3]:
                for completion in counts[1::3]:
                    usage = Usage(prompt, completion)
                    _same(price.cost(usage), _plain_cost(price, usage))


def test_billed_cost_of_one_served_attempt_is_the_sum_it_replaced() -> None:
    served = [Attempt("m", "p", "ok", 1.0)]
    _same(billed_cost(served), sum((a.cost for a in served if a.outcome != "ok"), Decimal(0)))
    price = Price(Decimal("0.15"), Decimal("0.6"))
    for extra in ("0", "0.00001065", "1E+1"):
        cost = price.cost(Usage(23, 12))
        _same(cost + billed_cost(served), cost + Decimal(0))
        failed = Attempt("m", "p", "empty", 1.0, cost=Decimal(extra))
        both = [failed, *served]
        _same(billed_cost(both), Decimal(0) + Decimal(extra))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0.000123450000", "0.00012345"),
        ("0.00000001", "0.00000001"),  # str() writes 1E-8
        ("0E-12", "0"),
        ("0", "0"),
        ("1E+2", "100"),
        ("12.50", "12.5"),
        ("100", "100"),
        ("2.000", "2"),
        ("-0.0000005", "-0.0000005"),
    ],
)
def test_money_is_plain_decimal_text_without_an_exponent(value: str, text: str) -> None:
    assert money(Decimal(value)) == text
