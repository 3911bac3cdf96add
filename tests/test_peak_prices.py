"""An offer whose provider bills more at some hours of the day (DeepSeek's peak hours) is held and
billed the price in force when the request came, decided once when it is planned."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from faregate.catalog import build_catalog
from faregate.config import parse_settings
from faregate.errors import ConfigError
from faregate.routing.plan import Planner
from faregate.routing.worst_case import worst_case
from faregate.server.parse import parse_chat_request
from faregate.types import Price, Usage

OFF_PEAK = Price(Decimal("0.15"), Decimal("0.60"), cache_read=Decimal("0.003"))
PEAK = Price(Decimal("0.30"), Decimal("1.20"), cache_read=Decimal("0.006"))


def settings(hours: list[str], other: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    offers = [
        {
            "provider": "ds",
            "input": "0.15",
            "output": "0.60",
            "cache_read": "0.003",
            "peak": {"hours": hours, "input": "0.30", "output": "1.20", "cache_read": "0.006"},
        }
    ]
    if other is not None:
        offers.append(other)
    return parse_settings(
        {
            "providers": {
                "ds": {"base_url": "http://127.0.0.1:1/v1", "enabled": True},
                "or": {"base_url": "http://127.0.0.1:2/v1", "enabled": True},
            },
            "models": {"flash": {"context_window": 128000, "max_output_tokens": 8192, "offers": offers}},
            "catalog": {"broad": False},
        }
    )


def at(hour: int, minute: int = 0, body: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    request = parse_chat_request(
        {
            "model": "flash",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1000,
            **(body or {}),
        },
        {},
        "r",
    )
    request.received_at = datetime(2026, 12, 7, hour, minute, tzinfo=UTC).timestamp()
    return request


@pytest.mark.parametrize(
    ("hour", "minute", "price"),
    [
        (2, 0, PEAK),
        (1, 0, PEAK),
        (9, 59, PEAK),
        (4, 0, OFF_PEAK),
        (5, 0, OFF_PEAK),
        (12, 0, OFF_PEAK),
        (0, 59, OFF_PEAK),
    ],
)
async def test_a_request_is_held_and_billed_the_price_in_force_at_its_hour(
    hour: int, minute: int, price: Price
) -> None:
    planner = Planner(build_catalog(settings(["01:00-04:00", "06:00-10:00"])))
    request = at(hour, minute)
    plan = await planner.plan(request)
    (candidate,) = plan.candidates
    assert candidate.offer.price == price
    # The settlement bills the candidate's price, the hold reckons with the same one.
    usage = Usage(1000, 500)
    assert candidate.offer.price.cost(usage) == price.cost(usage)
    held, _ = await worst_case(plan, request)
    # max_tokens at its output price, and a prompt of a few tokens at its input price.
    assert price.cost(Usage(0, 1000)) < held < price.cost(Usage(100, 1000))
    assert (await planner.plan(request)).candidates == plan.candidates  # planned again: the same price


async def test_the_same_request_costs_twice_as_much_at_peak() -> None:
    planner = Planner(build_catalog(settings(["01:00-04:00", "06:00-10:00"])))
    usage = Usage(10_000, 2_000, cache_read_tokens=4_000)
    peak = (await planner.plan(at(2))).candidates[0].offer.price.cost(usage)
    off_peak = (await planner.plan(at(12))).candidates[0].offer.price.cost(usage)
    assert (peak, off_peak) == (Decimal("0.004224"), Decimal("0.002112"))
    held_peak, _ = await worst_case(await planner.plan(at(2)), at(2))
    held_off_peak, _ = await worst_case(await planner.plan(at(12)), at(12))
    assert held_peak == 2 * held_off_peak


async def test_peak_hours_may_span_midnight() -> None:
    planner = Planner(build_catalog(settings(["22:30-02:00"])))
    for hour, minute, price in [
        (23, 0, PEAK),
        (1, 59, PEAK),
        (22, 30, PEAK),
        (2, 0, OFF_PEAK),
        (22, 29, OFF_PEAK),
    ]:
        assert (await planner.plan(at(hour, minute))).candidates[0].offer.price == price, (hour, minute)


async def test_offers_are_ordered_by_the_price_in_force() -> None:
    """A seller cheap off-peak but dear at its peak goes after a flat one at peak hours only."""
    flat = {"provider": "or", "input": "0.20", "output": "0.80"}
    planner = Planner(build_catalog(settings(["01:00-04:00"], flat)))
    assert [c.offer.provider for c in (await planner.plan(at(12))).candidates] == ["ds", "or"]
    assert [c.offer.provider for c in (await planner.plan(at(2))).candidates] == ["or", "ds"]


def test_the_dearest_price_of_a_model_counts_its_peak_price() -> None:
    planner = Planner(build_catalog(settings(["01:00-04:00"])))
    assert planner.dearest_price("flash") == Price(PEAK.input, PEAK.output)


@pytest.mark.parametrize("hours", [["1-4"], ["01:00-24:00"], ["04:00-04:00"], ["01:00"], []])
def test_peak_hours_are_checked_at_start(hours: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"models\.flash\.offers\[0\]\.peak"):
        build_catalog(settings(hours))
