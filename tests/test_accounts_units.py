"""Unit tests of the accounts building blocks: money, budgets' windows, rate buckets, refusals,
the upstream priority queue and the dedicated-offer filter. No network, no processes."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from faregate.accounts.backend import Refused
from faregate.accounts.metered import refusal_error
from faregate.accounts.money import charge_nano, hold_nano, parse_usd, usd_text
from faregate.accounts.policy import (
    Budget,
    Limits,
    Policy,
    budgets_from_text,
    budgets_to_text,
    calendar_period,
    hour_of,
    limits_for,
    parse_budget_spec,
    parse_budgets,
    window_of,
)
from faregate.accounts.ratelimit import LocalRateLimiter, RateRefusal, RateState, duration_text, rate_headers
from faregate.catalog import build_catalog
from faregate.config import AccountsSettings, UpstreamQueueSettings, parse_settings
from faregate.errors import InsufficientCredits, InvalidRequest, RateLimited
from faregate.routing.candidate_fit import ModelUnavailable
from faregate.routing.plan import Planner
from faregate.routing.queue import PREMIUM, STANDARD, VERIFICATION, PriorityGate, UpstreamLimiter
from faregate.server.parse import parse_chat_request
from faregate.wire.openai import error_body


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- money -----------------------------------------------------------------------------------


def test_holds_round_up_and_charges_round_half_even() -> None:
    assert hold_nano(Decimal("0.0000000001")) == 1
    assert hold_nano(Decimal("0.001")) == 1_000_000
    assert charge_nano(Decimal("0.0000000015")) == 2
    assert charge_nano(Decimal("0.0000000025")) == 2
    assert usd_text(1_000_000) == "0.001" and usd_text(0) == "0" and usd_text(-500_000_000) == "-0.5"


@pytest.mark.parametrize(
    ("value", "nano"),
    [
        ("10", 10_000_000_000),
        ("0.5", 500_000_000),
        (".5", 500_000_000),
        (" 5 ", 5_000_000_000),  # blanks around it, as a header value or a pasted argument has
        (0.1, 100_000_000),
        (0.00001, 10_000),  # a JSON number: str() writes it 1e-05
        (Decimal("1E+3"), 1_000_000_000_000),
    ],
)
def test_parse_usd_accepts_exact_amounts(value: object, nano: int) -> None:
    assert parse_usd(value, "amount") == nano


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "0",
        "abc",
        "NaN",
        "Infinity",
        "0.0000000001",
        True,
        None,
        "1e20",
        # An exponent past the decimal context's range: a 400, not an Overflow (a 500).
        "1e999999",
        "9e999999999",
        # More digits than the decimal context's 28: refused, not rounded to a whole amount.
        "1.0000000000000000000000000000001",
        # Positive, but less than a nano-dollar however it is written: refused, not stored as 0.
        "1e-2000000",
        # What Python's Decimal reads but nobody writes as an amount of money.
        "1_000",
        "1_0.5",
        "1e3",
        "sNaN",
        "-Infinity",
        "\uff15",  # a full-width 5
        "\u0665",  # an Arabic-Indic 5
    ],
)
def test_parse_usd_refuses_what_cannot_be_stored_exactly(value: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_usd(value, "amount")


# -- budgets ---------------------------------------------------------------------------------


def test_calendar_periods_are_utc_day_iso_week_and_month() -> None:
    now = ts("2024-02-29T13:45:00")  # a Thursday in a leap February
    day, next_day = calendar_period("day", now)
    assert (day.isoformat(), next_day.isoformat()) == (
        "2024-02-29T00:00:00+00:00",
        "2024-03-01T00:00:00+00:00",
    )
    week, next_week = calendar_period("week", now)
    assert week.isoformat() == "2024-02-26T00:00:00+00:00" and next_week.isoformat().startswith("2024-03-04")
    month, next_month = calendar_period("month", ts("2024-12-31T23:59:59"))
    assert month.isoformat().startswith("2024-12-01") and next_month.isoformat().startswith("2025-01-01")


def test_windows_count_whole_hour_buckets() -> None:
    now = ts("2024-05-10T10:30:00")
    calendar = window_of(Budget("day", "calendar", 5), now)
    assert calendar.since_hour == hour_of(ts("2024-05-10T00:00:00"))
    assert calendar.resets_at == ts("2024-05-11T00:00:00")
    rolling = window_of(Budget("day", "rolling", 5), now)
    # The bucket the window starts in counts whole: up to an hour more spend is seen, never less.
    assert rolling.since_hour == hour_of(ts("2024-05-09T10:00:00")) and rolling.resets_at is None


def test_budgets_parse_validate_and_round_trip() -> None:
    budgets = parse_budgets(
        [{"period": "day", "limit_usd": "5"}, {"period": "month", "window": "rolling", "limit_usd": 100}]
    )
    assert budgets == (Budget("day", "calendar", 5_000_000_000), Budget("month", "rolling", 100_000_000_000))
    assert budgets_from_text(budgets_to_text(budgets)) == budgets
    assert parse_budget_spec("week:rolling=2.5") == Budget("week", "rolling", 2_500_000_000)
    for bad in (
        [{"period": "year", "limit_usd": "1"}],
        [{"period": "day", "limit_usd": "1"}, {"period": "day", "limit_usd": "2"}],
        [{"period": "day", "limit_usd": "1", "extra": 1}],
        "day=5",
    ):
        with pytest.raises(InvalidRequest):
            parse_budgets(bad)


def test_premium_tier_has_higher_default_limits_and_keys_override_them() -> None:
    settings = AccountsSettings()
    standard, premium = limits_for(Policy(), False, settings), limits_for(Policy(), True, settings)
    assert premium.requests_per_minute > standard.requests_per_minute  # type: ignore[operator]
    assert premium.tokens_per_minute > standard.tokens_per_minute  # type: ignore[operator]
    assert limits_for(Policy(requests_per_minute=7), True, settings).requests_per_minute == 7


def test_a_tier_limit_left_out_of_the_config_keeps_its_default() -> None:
    """`standard: {requests_per_minute: 100}` lowers one limit; it must not lift the other (it
    became None, unlimited). Only an explicit null makes a tier's limit unlimited."""
    settings = parse_settings(
        {"accounts": {"standard": {"requests_per_minute": 100}, "premium": {"tokens_per_minute": 5}}}
    ).accounts
    assert limits_for(Policy(), False, settings) == Limits(100, 1_000_000)
    assert limits_for(Policy(), True, settings) == Limits(6000, 5)
    unlimited = parse_settings({"accounts": {"standard": {"tokens_per_minute": None}}}).accounts
    assert limits_for(Policy(), False, unlimited) == Limits(600, None)


# -- rate limits -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_request_bucket_bursts_to_the_limit_then_refills_per_minute() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    limits = Limits(3, None)
    states = [limiter.take("k", limits, 10) for _ in range(3)]
    assert [s.requests.remaining for s in states if isinstance(s, RateState) and s.requests] == [2, 1, 0]
    refused = limiter.take("k", limits, 10)
    assert isinstance(refused, RateRefusal) and refused.what == "requests"
    assert refused.retry_after_s == pytest.approx(20.0)  # one request per 20 s at 3/min
    clock.now += 20
    assert isinstance(limiter.take("k", limits, 10), RateState)


def test_tokens_are_taken_as_reserved_and_corrected_at_settlement() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    limits = Limits(None, 1000)
    assert isinstance(limiter.take("k", limits, 800), RateState)
    assert isinstance(limiter.take("k", limits, 300), RateRefusal)
    limiter.give_back("k", limits, 0, 800 - 100)  # the request used 100 of its 800
    state = limiter.take("k", limits, 300)
    assert isinstance(state, RateState) and state.tokens is not None and state.tokens.remaining == 600
    too_big = limiter.take("k", limits, 5000)
    assert isinstance(too_big, RateRefusal) and math.isinf(too_big.retry_after_s)


def test_an_overrun_settled_after_the_bucket_refilled_is_still_taken() -> None:
    """Tokens used beyond the reservation come off the bucket as it is at settlement: given back
    onto the level it had when the request was admitted, a bucket full again by then forgave them
    (the Redis script refills first)."""
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    limits = Limits(None, 1000)
    assert isinstance(limiter.take("k", limits, 900), RateState)
    clock.now += 60  # a long request: the bucket is full again when it ends
    limiter.give_back("k", limits, 0, 900 - 1400)  # it used 1400 of its 900
    state = limiter.take("k", limits, 0)
    assert isinstance(state, RateState) and state.tokens is not None and state.tokens.remaining == 500


def test_a_request_that_can_never_fit_is_told_so_even_when_the_requests_bucket_is_empty() -> None:
    """More tokens than the limit is request_too_large whenever it is asked: a Retry-After for the
    requests bucket would only make the client wait (the SDKs do) to be told that afterwards."""
    limiter = LocalRateLimiter(Clock())
    limits = Limits(1, 1000)
    assert isinstance(limiter.take("k", limits, 10), RateState)
    too_big = limiter.take("k", limits, 5000)
    assert isinstance(too_big, RateRefusal) and too_big.what == "tokens", too_big
    error = refusal_error(Refused("rate", rate=too_big), 0, 5000)
    assert error.code == "request_too_large" and "Retry-After" not in error.headers


def test_openai_style_headers() -> None:
    assert duration_text(0.02) == "20ms" and duration_text(1) == "1s" and duration_text(360) == "6m0s"
    assert duration_text(1.5) == "1.5s" and duration_text(3723) == "1h2m3s"
    limiter = LocalRateLimiter(Clock())
    state = limiter.take("k", Limits(60, 1000), 100)
    assert isinstance(state, RateState)
    assert rate_headers(state) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }


def test_refusals_become_402_and_429_in_openai_format() -> None:
    credits = refusal_error(Refused("credits", balance_nano=500_000, held_nano=200_000), 1_000_000, 10)
    assert isinstance(credits, InsufficientCredits) and credits.status == 402
    body = error_body(credits)["error"]
    assert body["code"] == "insufficient_quota" and body["type"] == "insufficient_quota"
    assert "$0.001" in body["message"] and "$0.0005" in body["message"] and "$0.0002" in body["message"]
    window = window_of(Budget("day", "calendar", 5_000_000), ts("2024-05-10T10:00:00"))
    budget = refusal_error(Refused("budget", 9, 0, window, 4_500_000), 1_000_000, 10)
    assert (
        budget.status == 402 and budget.code == "budget_exceeded" and "2024-05-11 00:00 UTC" in budget.message
    )
    limiter = LocalRateLimiter(Clock())
    limiter.take("k", Limits(1, None), 1)
    refusal = limiter.take("k", Limits(1, None), 1)
    assert isinstance(refusal, RateRefusal)
    rate = refusal_error(Refused("rate", rate=refusal), 1, 1)
    assert isinstance(rate, RateLimited) and rate.status == 429
    assert rate.headers["Retry-After"] == "60" and rate.headers["x-ratelimit-remaining-requests"] == "0"


# -- the upstream queue ----------------------------------------------------------------------


async def test_gate_serves_premium_first_then_fifo() -> None:
    gate = PriorityGate(UpstreamQueueSettings(max_concurrent=1, timeout_s=5), "sim")
    first = await gate.acquire(STANDARD)
    order: list[str] = []

    async def wait(name: str, tier: int) -> None:
        slot = await gate.acquire(tier)
        order.append(name)
        await asyncio.sleep(0)
        slot.release()

    tasks = [asyncio.create_task(wait(f"s{i}", STANDARD)) for i in range(3)]
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(wait(f"p{i}", PREMIUM)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert gate.queued == 6
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["p0", "p1", "p2", "s0", "s1", "s2"]
    assert gate.active == 0


async def test_a_verification_holding_a_slot_never_makes_a_user_wait() -> None:
    # One call at a time for users. A verification took its slot when none was busy; a user who
    # comes while it runs is served at once (it waited up to a whole shadow call): verifications
    # have `verification_slots` of their own, beyond the users' `max_concurrent`.
    gate = PriorityGate(UpstreamQueueSettings(max_concurrent=1, timeout_s=0.05), "sim")
    shadow = await gate.acquire(VERIFICATION)
    user = await gate.acquire(STANDARD)
    assert gate.active == 1 and gate.queued == 0
    # A second verification waits for the verifications' slot, not for the user's.
    waiting = asyncio.create_task(gate.acquire(VERIFICATION))
    await asyncio.sleep(0)
    assert gate.snapshot()["verifications_queued"] == 1
    user.release()
    assert not waiting.done()
    shadow.release()
    (await waiting).release()
    assert gate.served_verification == 2 and gate.served_standard == 1
    assert (gate.active, gate.snapshot()["verifications_active"]) == (0, 0)
    # With no verification slot, a verification is refused at once (its plan's next candidate).
    none = PriorityGate(UpstreamQueueSettings(max_concurrent=1, verification_slots=0), "sim")
    with pytest.raises(RateLimited, match="limit of 0 concurrent quality verification calls"):
        await none.acquire(VERIFICATION)
    assert none.active == 0


async def test_gate_times_out_with_429_and_bounds_its_queue() -> None:
    gate = PriorityGate(UpstreamQueueSettings(max_concurrent=1, max_queued=1, timeout_s=0.05), "sim")
    held = await gate.acquire(PREMIUM)
    waiter = asyncio.create_task(gate.acquire(STANDARD))
    await asyncio.sleep(0.005)
    with pytest.raises(RateLimited) as full:
        await gate.acquire(PREMIUM)
    assert "already waiting" in full.value.message and "Retry-After" in full.value.headers
    with pytest.raises(RateLimited) as late:
        await waiter
    assert late.value.code == "upstream_queue_timeout" and gate.timeouts == 1
    held.release()
    assert gate.active == 0
    again = await gate.acquire(STANDARD)
    again.release()
    again.release()  # idempotent
    assert gate.active == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = UpstreamLimiter({"sim": UpstreamQueueSettings(max_concurrent=1, timeout_s=5)})
    held = await limiter.acquire("sim", STANDARD)
    waiter = asyncio.create_task(limiter.acquire("sim", STANDARD))
    await asyncio.sleep(0.005)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release()
    assert limiter.gates["sim"].active == 0
    async with limiter.slot("other-provider", STANDARD):  # not limited: no gate at all
        pass


# -- dedicated offers ------------------------------------------------------------------------


async def test_dedicated_offers_serve_premium_keys_only() -> None:
    settings = parse_settings(
        {
            "catalog": {"broad": False},
            "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {
                "m": {
                    "input": 1,
                    "output": 1,
                    "offers": [{"provider": "p", "dedicated": True, "input": 0.5, "output": 0.5}],
                },
                "shared": {
                    "input": 1,
                    "output": 1,
                    "offers": [{"provider": "p"}, {"provider": "p", "dedicated": True}],
                },
            },
        }
    )
    planner = Planner(build_catalog(settings))

    def request(model: str, premium: bool):  # type: ignore[no-untyped-def]
        chat = parse_chat_request({"model": model, "messages": [{"role": "user", "content": "hi"}]}, {}, "r")
        chat.premium = premium
        return chat

    with pytest.raises(ModelUnavailable, match="dedicated to premium keys"):
        await planner.plan(request("m", False))
    assert (await planner.plan(request("m", True))).candidates[0].offer.dedicated
    standard = await planner.plan(request("shared", False))
    assert [c.offer.dedicated for c in standard.candidates] == [False]
    assert sorted(c.offer.dedicated for c in (await planner.plan(request("shared", True))).candidates) == [
        False,
        True,
    ]


async def test_a_policy_read_that_started_before_a_change_is_not_cached_after_it() -> None:
    # A request reads the key's policy; an admin change commits and forgets the cached one
    # while that read is still on its way back. The old policy it returns must not be
    # cached over the change (as KeyStore guards verified keys against a revocation).
    from typing import Any, cast

    from faregate.accounts.metered import PolicyCache
    from faregate.store.protocols import AccountRow, AccountTable

    class SlowTable:
        def __init__(self) -> None:
            self.rpm = 100
            self.gate: asyncio.Event | None = None

        async def get_account(self, key_id: str) -> AccountRow:
            row, gate = AccountRow(key_id, 0, self.rpm, None, None, ""), self.gate
            if gate is not None:
                await gate.wait()
            return row

    table = SlowTable()
    policies = PolicyCache(cast(AccountTable, cast(Any, table)), ttl_s=60.0)
    gate = table.gate = asyncio.Event()
    reading = asyncio.create_task(policies.get("key_1"))
    await asyncio.sleep(0)  # the read has the old row and is on its way back
    table.rpm, table.gate = 5, None  # the change commits...
    policies.forget("key_1")  # ...and this process forgets the cached policy
    gate.set()
    assert (await asyncio.wait_for(reading, 5)).requests_per_minute == 100
    assert (await policies.get("key_1")).requests_per_minute == 5
