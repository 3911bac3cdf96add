"""Holds on a verification cap (quality/spend.py): admitted at the worst case, held until the real
cost is charged; one that fits alone waits for the others to settle; one that cannot fits pauses."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.quality.live import RouteCalibration, today
from faregate.quality.spend import Holds, left_today
from faregate.routing.worst_case import JUDGE_PROMPT_TOKENS, judge_call
from faregate.types import Price


def route(cap: str) -> RouteCalibration:
    settings = QualitySettings(verification=VerificationSettings(daily_usd_cap=Decimal(cap)))
    return RouteCalibration("r", "router", settings)


async def test_a_hold_counts_until_released_and_a_second_waits_for_it() -> None:
    capped, holds, day = route("1.0"), Holds(), today()
    assert await holds.admit(capped, day, Decimal("0.6"))
    assert holds.held("r") == Decimal("0.6")
    # 0.6 held + 0.6 > 1.0, but 0.6 alone fits: the second waits, it is not refused.
    second = asyncio.create_task(holds.admit(capped, day, Decimal("0.6")))
    await asyncio.sleep(0.01)
    assert not second.done()
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.1"), day)
    await holds.release(capped, Decimal("0.6"))
    assert await second  # 0.1 spent + 0.6 <= 1.0
    assert holds.held("r") == Decimal("0.6") and left_today(capped, day) == Decimal("0.9")
    assert not capped.exhausted(day)


async def test_what_cannot_fit_even_alone_is_refused_and_pauses_the_day() -> None:
    capped, holds, day = route("1.0"), Holds(), today()
    assert await holds.admit(capped, day, Decimal("0.5"))
    waiting = asyncio.create_task(holds.admit(capped, day, Decimal("0.9")))
    await asyncio.sleep(0.01)
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.3"), day)
    await holds.release(capped, Decimal("0.5"))
    # 0.3 spent + 0.9 > 1.0: refused once the other settled, and the route is paused for the day.
    assert not await waiting
    assert capped.exhausted(day) and capped.state.totals.skipped_for_cap == 1
    assert holds.held("r") == 0


def test_a_judges_worst_case_is_priced_as_a_cascades() -> None:
    price = Price(Decimal(100), Decimal(100))
    usd, tokens = judge_call(price, 100, 200)
    assert tokens == 100 + JUDGE_PROMPT_TOKENS + 200
    assert usd == Decimal(100 + JUDGE_PROMPT_TOKENS + 200) * 100 / Decimal(1_000_000)
