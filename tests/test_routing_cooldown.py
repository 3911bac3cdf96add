"""An offer its upstream told to wait (a 429, 503 or 529 whose Retry-After is longer than the
gateway waits out) cools down: the next requests try it after every other candidate, not first,
each paying a round trip and a failure until its breaker opens. Scoped as the breakers are (the key
told so; every key once `shared_min_keys` keys were), bounded by the breaker's cool-down, ended by
a success, and never a refusal: with nothing else to try it is still called."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from faregate.config import BreakerSettings
from faregate.errors import UpstreamFailed, UpstreamFailure
from faregate.providers.base import UpstreamCall
from faregate.routing.attempts import AttemptRunner
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Planner
from faregate.telemetry.metrics import StateCollector
from faregate.types import ChatRequest
from test_routing import Scripted, ok, request, runner_for


def limited(seconds: float | None, status: int = 429) -> UpstreamFailure:
    kind = "rate_limited" if status == 429 else "server_error"
    return UpstreamFailure(kind, f"HTTP {status}", status=status, retry_after=seconds)


def keyed(body: dict[str, Any], key: str | None) -> ChatRequest:
    req = request(body)
    req.key_id = key
    return req


async def served_by(planner: Planner, runner: AttemptRunner, key: str | None, model: str = "mid") -> str:
    req = keyed({"model": model}, key)
    served = await runner.complete(req, await planner.plan(req))
    return served.candidate.offer.provider


async def test_an_offer_told_to_wait_is_passed_over_by_that_key_then_by_every_key() -> None:
    # mid's offers: b (cheaper) first, then a. b says it is full for a minute, longer than the
    # gateway waits (max_retry_after_s 5), so the request falls over to a.
    b = Scripted("b", [limited(60), limited(60)])
    a = Scripted("a", [])
    planner, runner = runner_for({"a": a, "b": b})
    assert await served_by(planner, runner, "key_a") == "a"
    assert len(b.calls) == 1
    # The next requests of that key go to a first: b is not asked again to learn the same.
    for _ in range(3):
        assert await served_by(planner, runner, "key_a") == "a"
    assert len(b.calls) == 1, "a key told to wait calls the offer again at once"
    # Another key is not stopped by one key's word (one client may provoke a 429 at will).
    assert await served_by(planner, runner, "key_b") == "a"
    assert len(b.calls) == 2
    # Told to two keys (shared_min_keys): the offer cools for everyone.
    assert await served_by(planner, runner, "key_c") == "a"
    assert len(b.calls) == 2
    health = runner.health.snapshot()["b/mid"]
    assert health["keys_cooling"] == 2 and 0 < health["cooling_s"] <= 30
    assert runner.health.snapshot()["a/mid"]["keys_cooling"] == 0
    # The passed-over offer is no fallback: it was not called.
    assert runner.fallbacks == 2


async def test_with_nothing_else_to_try_a_cooling_offer_is_still_called_and_a_success_ends_it() -> None:
    a = Scripted("a", [limited(60), limited(60)])
    planner, runner = runner_for({"a": a}, retries=0)
    req = keyed({"model": "cheap"}, "key_a")
    with pytest.raises(UpstreamFailed) as info:
        await runner.complete(req, await planner.plan(req))
    assert info.value.headers["Retry-After"] == "60"
    assert runner.health.cools("a/cheap", "key_a", time.monotonic())
    # The only offer: a Retry-After is the upstream's estimate (and a smaller request may fit its
    # limit), so it is asked, not refused by the gateway; the client gets the upstream's 502 again.
    req = keyed({"model": "cheap"}, "key_a")
    with pytest.raises(UpstreamFailed):
        await runner.complete(req, await planner.plan(req))
    assert len(a.calls) == 2
    assert await served_by(planner, runner, "key_a", "cheap") == "a"
    assert not runner.health.cooling, "a served call ends the cool-down"


async def test_a_cooling_candidate_is_tried_after_every_other_model() -> None:
    # models [cheap, mid]: a/cheap cools, so b/mid, then a/mid serve first; a/cheap is called
    # only when they all fail.
    a = Scripted("a", [limited(60)])
    b = Scripted("b", [])
    planner, runner = runner_for({"a": a, "b": b}, retries=0)
    body = {"models": ["cheap", "mid"]}
    first = keyed(body, "key_a")
    served = await runner.complete(first, await planner.plan(first))
    assert [(x.provider, x.model) for x in served.attempts] == [("a", "cheap"), ("b", "mid")]
    b.outcomes = [UpstreamFailure("server_error", "HTTP 500", status=500)]
    a.outcomes = [UpstreamFailure("server_error", "HTTP 500", status=500), ok("cheap after all")]
    again = keyed(body, "key_a")
    served = await runner.complete(again, await planner.plan(again))
    assert [(x.provider, x.model, x.outcome) for x in served.attempts] == [
        ("b", "mid", "server_error"),
        ("a", "mid", "server_error"),
        ("a", "cheap", "ok"),
    ]


@pytest.mark.parametrize(
    ("failure", "cools"),
    [
        (limited(60), True),
        (limited(60, 503), True),
        (limited(60, 529), True),
        (limited(None), False),  # no word of how long: the breaker's business
        (limited(60, 500), False),  # a 500 says nothing about capacity
        # OpenAI's insufficient_quota: no rate limit, our account needs payment.
        (UpstreamFailure("server_error", "HTTP 429", status=429, retry_after=60), False),
    ],
)
async def test_what_cools_an_offer(failure: UpstreamFailure, cools: bool) -> None:
    planner, runner = runner_for({"a": Scripted("a", []), "b": Scripted("b", [failure])}, retries=0)
    await served_by(planner, runner, "key_a")
    assert runner.health.cools("b/mid", "key_a", time.monotonic()) is cools


async def test_a_short_retry_after_is_waited_out_not_cooled() -> None:
    b = Scripted("b", [limited(0.01)])
    planner, runner = runner_for({"a": Scripted("a", []), "b": b})
    assert await served_by(planner, runner, "key_a") == "b"
    assert not runner.health.cooling


def test_a_cool_down_is_at_most_the_breakers_and_then_forgotten() -> None:
    health = HealthBoard(BreakerSettings(cooldown_s=30, shared_min_keys=1))
    now = time.monotonic()
    health.cool("sim/m", "key_a", 86_400, now)  # a daily quota's Retry-After
    assert health.cools("sim/m", "key_a", now + 29.9) and health.cools("sim/m", "key_b", now + 29.9)
    assert not health.cools("sim/m", "key_a", now + 30)
    assert not health.cooling, "an ended cool-down is dropped: the hot path looks nothing up"


def test_cooling_is_in_the_metrics() -> None:
    health = HealthBoard(BreakerSettings(cooldown_s=30, shared_min_keys=1))
    health.failure("sim/m", "key_a")
    health.cool("sim/m", "key_a", 20)
    families = {m.name: m for m in StateCollector(health=lambda: health).collect()}
    (cooling,) = families["faregate_offer_cooling_seconds"].samples
    (keys,) = families["faregate_offer_keys_cooling"].samples
    assert 19 < cooling.value <= 20 and keys.value == 1


class CutByItsLimit(Scripted):
    """Streams some text, then fails inside the stream with `failure` (an error event)."""

    def __init__(self, name: str, failure: UpstreamFailure) -> None:
        super().__init__(name, [])
        self.failure = failure

    async def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(call)
        yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "cools"),
    [
        (limited(60), True),
        (limited(60, 529), True),
        (limited(1), False),  # waited out by the next request's own retry: no need
        (limited(60, 500), False),
    ],
)
async def test_a_rate_limit_inside_a_stream_after_content_cools_the_offer(
    failure: UpstreamFailure, cools: bool
) -> None:
    # b (mid's cheaper offer) sends text, then its stream ends with a rate-limit error event that
    # says to come back in a minute: the next requests are not to be cut by b to learn it again.
    b = CutByItsLimit("b", failure)
    planner, runner = runner_for({"a": Scripted("a", []), "b": b})
    req = keyed({"model": "mid", "stream": True}, "key_a")
    opened = await runner.open_stream(req, await planner.plan(req))
    assert opened.candidate.offer.provider == "b"
    with pytest.raises(UpstreamFailure):
        async for _ in opened:
            pass
    assert runner.health.cools("b/mid", "key_a", time.monotonic()) is cools
