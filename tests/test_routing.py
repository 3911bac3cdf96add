"""Routes, rules, hints, offer ordering, breakers and the attempt loop, with scripted providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from faregate.catalog import build_catalog
from faregate.config import BreakerSettings, UpstreamQueueSettings, parse_settings
from faregate.errors import (
    ConfigError,
    InvalidRequest,
    RateLimited,
    UpstreamFailed,
    UpstreamFailure,
    UpstreamRejected,
)
from faregate.providers.anthropic import AnthropicProvider
from faregate.providers.base import UpstreamCall
from faregate.providers.registry import ProviderRegistry, make_upstream_pool
from faregate.quality.spend import shadow_request
from faregate.routing.attempts import AttemptRunner
from faregate.routing.candidate_fit import ModelUnavailable
from faregate.routing.estimate import PromptSize
from faregate.routing.health import CLOSED, HALF_OPEN, OPEN, Breaker, HealthBoard
from faregate.routing.plan import Candidate, Plan, Planner
from faregate.routing.queue import STANDARD, UpstreamLimiter
from faregate.routing.worst_case import worst_case
from faregate.server.parse import parse_chat_request
from faregate.store.rows import attempt_summary
from faregate.types import ChatRequest, Completion, Usage
from faregate.wire.anthropic_upstream import DEFAULT_MAX_TOKENS

PROVIDERS = {
    "a": {"base_url": "http://127.0.0.1:1/v1", "enabled": True},
    "b": {"base_url": "http://127.0.0.1:2/v1", "enabled": True},
}


def model(
    price: str, ctx: int = 32000, offers: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "input": price,
        "output": price,
        "context_window": ctx,
        "offers": offers or [{"provider": "a"}],
        **extra,
    }


MODELS = {
    "cheap": model("0.1", aliases=["c"]),
    "mid": model("1", offers=[{"provider": "a", "input": 2, "output": 2}, {"provider": "b"}]),
    "big": model("10", ctx=200_000),
    "tiny": model("0.01", ctx=1000),
    "vision": model("0.5", modalities=["text", "image"]),
}
ROUTES = {
    "smart": {
        "tiers": {"economy": ["cheap"], "standard": ["mid"], "premium": [{"model": "big", "retries": 3}]},
        "default_tier": "standard",
        "tasks": {"code": ["big", "mid"], "vision": ["vision"]},
        "rules": [
            {"when": {"modalities": ["image"]}, "use": ["vision"]},
            {"when": {"min_prompt_tokens": 5000}, "use": ["big"]},
        ],
        "chain": ["cheap"],
    },
    "outer": {"chain": ["tiny", "smart"]},
}


def settings(**over: Any):  # type: ignore[no-untyped-def]
    data = {"providers": PROVIDERS, "models": MODELS, "routes": ROUTES, "catalog": {"broad": False}}
    data.update(over)
    return parse_settings(data)


def request(body: dict[str, Any], headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    full = {"messages": [{"role": "user", "content": "hello"}], **body}
    return parse_chat_request(full, headers or {}, "req")


@pytest.fixture()
def planner() -> Planner:
    s = settings()
    return Planner(build_catalog(s), s.routes, s.routing)


async def names(planner: Planner, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[str]:
    plan = await planner.plan(request(body, headers))
    return [f"{c.offer.provider}/{c.model.name}" for c in plan.candidates]


async def test_tier_map_and_default_tier(planner: Planner) -> None:
    assert await names(planner, {"model": "smart"}) == ["b/mid", "a/mid", "a/cheap"]
    assert await names(planner, {"model": "smart", "faregate": {"tier": "economy"}}) == ["a/cheap"]
    assert await names(planner, {"model": "smart"}, {"x-faregate-tier": "premium"}) == ["a/big", "a/cheap"]


async def test_task_map_wins_over_tier(planner: Planner) -> None:
    got = await names(planner, {"model": "smart", "faregate": {"task": "code", "tier": "economy"}})
    assert got == ["a/big", "b/mid", "a/mid", "a/cheap"]


async def test_rules_on_modality_and_prompt_length(planner: Planner) -> None:
    image = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/y.png"}}],
        }
    ]
    assert await names(planner, {"model": "smart", "messages": image}) == ["a/vision"]
    long = [{"role": "user", "content": "word " * 6000}]
    assert (await names(planner, {"model": "smart", "messages": long}))[0] == "a/big"


async def test_a_file_part_needs_a_model_that_reads_files() -> None:
    """A `file` part (a PDF) required no modality, so it went to a text-only model, which cannot
    read it. It needs `file` among the model's modalities, and a rule may match on it."""
    models = {**MODELS, "reader": model("0.5", modalities=["text", "image", "file"])}
    rules = [{"when": {"modalities": ["file"]}, "use": ["reader"]}]
    s = settings(models=models, routes={"t": {"rules": rules, "chain": ["cheap"]}})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
    messages = [{"role": "user", "content": [pdf, {"type": "text", "text": "sum it up"}]}]
    assert await names(planner, {"model": "t", "messages": messages}) == ["a/reader"]
    assert await names(planner, {"models": ["cheap", "reader"], "messages": messages}) == ["a/reader"]
    with pytest.raises(InvalidRequest, match="'cheap' does not accept file") as info:
        await planner.plan(request({"model": "cheap", "messages": messages}))
    assert info.value.code == "unsupported_modality"


async def test_a_tools_rule_matches_legacy_functions_too() -> None:
    """`has_tools` is about function calling: a request giving `functions` (the API before
    `tools`) is a request with tools, for either value of the rule."""
    rules = [{"when": {"has_tools": True}, "use": ["big"]}]
    s = settings(routes={"t": {"rules": rules, "chain": ["cheap"]}})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    functions = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
    tools = [{"type": "function", "function": functions[0]}]
    assert (await names(planner, {"model": "t", "tools": tools}))[0] == "a/big"
    assert (await names(planner, {"model": "t", "functions": functions}))[0] == "a/big"
    assert await names(planner, {"model": "t"}) == ["a/cheap"]


async def test_a_response_format_rule_ignores_the_default_text_format() -> None:
    """`{"type": "text"}` is the default response format (plain text, what no `response_format`
    gives): a request sending it asks for no structured output, and matched `has_response_format`."""
    rules = [{"when": {"has_response_format": True}, "use": ["big"]}]
    s = settings(routes={"t": {"rules": rules, "chain": ["cheap"]}})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    assert await names(planner, {"model": "t", "response_format": {"type": "json_object"}}) == [
        "a/big",
        "a/cheap",
    ]
    assert await names(planner, {"model": "t", "response_format": {"type": "text"}}) == ["a/cheap"]
    assert await names(planner, {"model": "t"}) == ["a/cheap"]
    negated = settings(
        routes={
            "t": {"rules": [{"when": {"has_response_format": False}, "use": ["big"]}], "chain": ["cheap"]}
        }
    )
    planner = Planner(build_catalog(negated), negated.routes, negated.routing)
    assert (await names(planner, {"model": "t", "response_format": {"type": "text"}}))[0] == "a/big"


async def test_nested_routes_and_retry_budgets(planner: Planner) -> None:
    plan = await planner.plan(request({"model": "outer", "faregate": {"tier": "premium"}}))
    assert [(c.model.name, c.retries) for c in plan.candidates] == [("tiny", 1), ("big", 3), ("cheap", 1)]


async def test_models_list_is_an_ordered_chain(planner: Planner) -> None:
    assert await names(planner, {"models": ["big", "c"]}) == ["a/big", "a/cheap"]


async def test_context_too_small_is_never_tried_and_400_names_models(planner: Planner) -> None:
    long = [{"role": "user", "content": "word " * 2000}]
    assert await names(planner, {"models": ["tiny", "cheap"], "messages": long}) == ["a/cheap"]
    with pytest.raises(InvalidRequest) as info:
        await planner.plan(request({"model": "tiny", "messages": long}))
    assert "2,00" in info.value.message and "tiny (1,000 tokens)" in info.value.message
    assert info.value.code == "context_length_exceeded"


async def test_a_refusal_for_context_and_cost_names_both(planner: Planner) -> None:
    """A request one model is too small for and the other over the cap for was told only about the
    context window (the cost cap hidden, and raising it would have served the request). Every
    reason is said; the code is the first of context, modality, cost."""
    long = [{"role": "user", "content": "word " * 2000}]
    body = {"models": ["tiny", "big"], "messages": long, "faregate": {"max_cost_usd": "0.00001"}}
    with pytest.raises(InvalidRequest) as info:
        await planner.plan(request(body))
    assert info.value.code == "context_length_exceeded"
    assert "tiny (1,000 tokens)" in info.value.message
    assert "max_cost_usd" in info.value.message and "big (worst case $" in info.value.message
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.io/y.png"}}]}]
    body = {"models": ["cheap", "vision"], "messages": image, "faregate": {"max_cost_usd": "0.00001"}}
    with pytest.raises(InvalidRequest) as info:
        await planner.plan(request(body))
    assert info.value.code == "unsupported_modality"
    assert (
        "'cheap' does not accept image" in info.value.message and "vision (worst case $" in info.value.message
    )


async def test_max_tokens_counts_against_the_context(planner: Planner) -> None:
    with pytest.raises(InvalidRequest, match="tiny"):
        await planner.plan(request({"model": "tiny", "max_tokens": 995}))
    assert await names(planner, {"model": "tiny", "max_tokens": 900}) == ["a/tiny"]


async def test_a_messages_upstream_is_fitted_with_the_max_tokens_it_is_sent() -> None:
    # Without the client's max_tokens a Messages upstream is sent one all the same (8,192, or the
    # model's max output: wire/anthropic_upstream.py), and refuses a prompt that overflows the
    # context window with it (a 400 for the client): a model with room for it serves instead.
    providers = {
        **PROVIDERS,
        "c": {"base_url": "http://127.0.0.1:3/v1", "enabled": True, "protocol": "anthropic"},
    }
    models = {
        "claude": model("1", ctx=12_000, offers=[{"provider": "c"}]),
        "claude-short": model("1", ctx=12_000, offers=[{"provider": "c"}], max_output_tokens=1000),
        "both": model(
            "1", ctx=12_000, offers=[{"provider": "c"}, {"provider": "a", "input": 2, "output": 2}]
        ),
        "wide": model("2", ctx=200_000),
    }
    s = settings(providers=providers, models=models, routes={})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    long = [{"role": "user", "content": "word " * 6000}]  # 6,000 tokens and a few
    assert await names(planner, {"models": ["claude", "wide"], "messages": long}) == ["a/wide"]
    assert await names(planner, {"models": ["claude-short", "wide"], "messages": long}) == [
        "c/claude-short",
        "a/wide",
    ]
    # Its OpenAI-wire offer leaves the rest of the window to the output: it still fits.
    assert await names(planner, {"models": ["both", "wide"], "messages": long}) == ["a/both", "a/wide"]
    # The client's max_tokens is what every offer is sent.
    assert await names(planner, {"models": ["claude", "wide"], "messages": long, "max_tokens": 100}) == [
        "c/claude",
        "a/wide",
    ]
    assert await names(planner, {"model": "claude"}) == ["c/claude"]
    alone = request({"model": "claude", "messages": long})
    assert planner.plan_now(alone) is None
    with pytest.raises(InvalidRequest) as info:
        await planner.plan(alone)
    assert info.value.code == "context_length_exceeded"
    assert "claude (12,000 tokens" in info.value.message


async def test_max_cost_skips_expensive_candidates(planner: Planner) -> None:
    body = {"model": "smart", "faregate": {"task": "code", "max_cost_usd": "0.0005"}, "max_tokens": 100}
    assert await names(planner, body) == ["b/mid", "a/mid", "a/cheap"]
    with pytest.raises(InvalidRequest, match="max_cost_usd"):
        await planner.plan(
            request({"model": "big", "max_tokens": 1000, "faregate": {"max_cost_usd": 0.000001}})
        )


async def test_max_cost_is_checked_offer_by_offer() -> None:
    """The cap holds for every offer tried, at that offer's own price: a dearer provider of a model
    whose cheapest offer fits is left out (a fallback to it could cost more than the cap), and a
    dedicated offer a non-premium key cannot use does not let its model in."""
    models = {
        **MODELS,
        "pro": model(
            "2", offers=[{"provider": "a", "input": 1, "output": 1, "dedicated": True}, {"provider": "b"}]
        ),
    }
    s = settings(models=models)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    # 7 prompt tokens, held as 9 (the light count's 1.25x, as the reservation) + 1,000 output:
    # $0.001009 at 1 per 1M, $0.002018 at 2.
    body = {"model": "mid", "max_tokens": 1000, "faregate": {"max_cost_usd": "0.0015"}}
    assert await names(planner, body) == ["b/mid"]
    with pytest.raises(InvalidRequest, match="max_cost_usd") as info:
        await planner.plan(request({**body, "model": "pro"}))
    assert "pro (worst case $0.002018)" in info.value.message
    premium = replace(request({**body, "model": "pro"}), premium=True)
    assert [c.offer.provider for c in (await planner.plan(premium)).candidates] == ["a"]


async def test_a_clients_cap_cannot_raise_the_routes_cap() -> None:
    """The route's `max_cost_usd` is the operator's ceiling: a client's larger cap replaced it, and
    let a request reach a candidate the operator had priced out. The smaller of the two applies."""
    routes = {**ROUTES, "capped": {"chain": ["big", "cheap"], "max_cost_usd": "0.0005"}}
    s = settings(routes=routes)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    # 100 output tokens: big's worst case is ~$0.001, over the route's cap; cheap's is ~$0.00001.
    body: dict[str, Any] = {"model": "capped", "max_tokens": 100}
    assert await names(planner, body) == ["a/cheap"]
    assert await names(planner, {**body, "faregate": {"max_cost_usd": 1}}) == ["a/cheap"]
    # A client's smaller cap still applies under the route's.
    with pytest.raises(InvalidRequest, match="max_cost_usd"):
        await planner.plan(request({**body, "faregate": {"max_cost_usd": "0.000001"}}))


async def test_a_routes_cap_holds_when_it_is_not_the_first_route_named() -> None:
    """Only the first route a request named brought its cap: `models: [open, capped]`, or a route
    whose chain reaches `capped`, let `capped`'s steps past the operator's cap on them. A route's
    cap holds for every step reached through it."""
    routes = {
        **ROUTES,
        "open": {"chain": ["cheap"]},
        "capped": {"chain": ["big"], "max_cost_usd": "0.0005"},
        "via": {"chain": ["tiny", "capped"]},
    }
    s = settings(routes=routes)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    body: dict[str, Any] = {"max_tokens": 100}
    assert await names(planner, {**body, "models": ["open", "capped"]}) == ["a/cheap"]
    assert await names(planner, {**body, "model": "via"}) == ["a/tiny"]
    assert await names(planner, {**body, "models": ["open", "big"]}) == ["a/cheap", "a/big"]
    assert await names(planner, {**body, "model": "via", "faregate": {"max_cost_usd": 1}}) == ["a/tiny"]


async def test_each_entry_of_a_models_list_is_planned_with_its_own_routes_settings() -> None:
    """The first route a `models` list named lent its settings to every other entry: `[capped,
    big]` and `[big, capped]` dropped big, a model the client named itself, for capped's cap;
    `[open, fast]` ordered fast's offers cheapest first though fast picks by latency; `[guarded,
    mid]` demoted mid's slow offer though a request for mid alone keeps it first. Each entry is
    planned as it would be alone, in the list's order, a model only once."""
    routes = {
        **ROUTES,
        "open": {"chain": ["cheap"]},
        "capped": {"chain": ["tiny"], "max_cost_usd": "0.0005"},
        "fast": {"chain": ["mid"], "offer_choice": "latency"},
        "guarded": {"chain": ["cheap"], "failover_p99_ms": 100},
    }
    s = settings(routes=routes)
    health = HealthBoard(BreakerSettings())
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(10):
        health.success("a/mid", 10.0)
        health.success("b/mid", 900.0)
    # 100 output tokens: big's worst case is ~$0.001, over capped's cap, which is not big's.
    body: dict[str, Any] = {"max_tokens": 100}
    assert await names(planner, {**body, "models": ["capped", "big"]}) == ["a/tiny", "a/big"]
    assert await names(planner, {**body, "models": ["big", "capped"]}) == ["a/big", "a/tiny"]
    assert await names(planner, {"model": "mid"}) == ["b/mid", "a/mid"]  # cheapest first
    assert await names(planner, {"models": ["guarded", "mid"]}) == ["a/cheap", "b/mid", "a/mid"]
    assert await names(planner, {"models": ["open", "fast"]}) == ["a/cheap", "a/mid", "b/mid"]
    # The route's own settings still hold for its steps wherever it stands in the list.
    assert await names(planner, {**body, "models": ["open", "capped"]}) == ["a/cheap", "a/tiny"]


async def test_a_model_over_one_entrys_cap_is_still_tried_for_a_later_entry_without_it() -> None:
    """A model is planned once per request, at its first appearance; one left out there for its
    route's cap was left out for good, though a later entry of the `models` list names it without
    that cap (asked alone, `big` is served): the client's own fallback was dropped."""
    routes = {**ROUTES, "capped": {"chain": ["big", "tiny"], "max_cost_usd": "0.0005"}}
    s = settings(routes=routes)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    # 100 output tokens: big's worst case is ~$0.001, over capped's cap; big named alone has none.
    body: dict[str, Any] = {"max_tokens": 100}
    assert await names(planner, {**body, "models": ["capped", "big"]}) == ["a/tiny", "a/big"]
    assert await names(planner, {**body, "models": ["capped", "big", "capped"]}) == ["a/tiny", "a/big"]
    with pytest.raises(InvalidRequest) as info:  # over both caps: said once
        await planner.plan(
            request({**body, "models": ["capped", "capped"], "faregate": {"max_cost_usd": 1e-6}})
        )
    assert info.value.message.count("big (worst case") == 1


LARGE_IMAGE = "data:image/png;base64," + "A" * 400_000  # ~6,000 billed tokens at 64 bytes each


@pytest.mark.parametrize(
    ("name", "messages", "cap"),
    [
        # 11 prompt tokens + 100 out at 1 per 1M is $0.000111; a cache write bills input at 2.
        ("anthro", None, "0.000112"),
        # A large inline image counted as 765 tokens, but held (and billed) by its size.
        (
            "eye",
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": LARGE_IMAGE}}]}],
            "0.001",
        ),
    ],
)
async def test_the_cap_reckons_the_prompt_as_the_reservation_does(
    name: str, messages: list[Any] | None, cap: str
) -> None:
    """The cap took every prompt token at the plain input price and a media part at 765 tokens, the
    reservation at the dearest input price (a cache write) and a large inline part by its size: a
    request passed a cap that its own hold, and its bill, went past. A plan within the cap now
    holds no more than the cap."""
    models = {
        **MODELS,
        "anthro": model("1", cache_write="2"),
        "eye": model("1", modalities=["text", "image"]),
    }
    s = settings(models=models)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    body: dict[str, Any] = {"model": name, "max_tokens": 100, **({"messages": messages} if messages else {})}
    worst, _ = await worst_case(await planner.plan(request(body)), request(body))
    assert worst > Decimal(cap)
    with pytest.raises(InvalidRequest, match="max_cost_usd"):
        await planner.plan(request({**body, "faregate": {"max_cost_usd": cap}}))
    within = {**body, "faregate": {"max_cost_usd": str(worst)}}
    assert (await worst_case(await planner.plan(request(within)), request(within)))[0] <= worst


async def test_without_max_tokens_a_messages_offer_is_held_and_capped_at_the_limit_it_is_sent() -> None:
    """A Messages upstream must be sent a max_tokens: without the client's, it is sent
    DEFAULT_MAX_TOKENS (8,192), not the model's max output (64,000), and can bill no more. The
    hold and the cost cap reckoned the 64,000: nearly 8 times the worst case, so a key with credit
    for the call was refused it (402), and a cap it fits left the model out."""
    providers = {**PROVIDERS, "claude": {"base_url": "http://127.0.0.1:3/v1", "protocol": "anthropic"}}
    models = {
        **MODELS,
        "sonnet": model("15", ctx=200_000, offers=[{"provider": "claude"}], max_output_tokens=64_000),
    }
    s = settings(providers=providers, models=models)
    planner = Planner(build_catalog(s), s.routes, s.routing)
    body: dict[str, Any] = {"model": "sonnet"}
    plan = await planner.plan(request(body))
    worst, tokens = await worst_case(plan, request(body))
    prompt = await plan.prompt.billable() if plan.prompt is not None else 0
    assert tokens == prompt + DEFAULT_MAX_TOKENS
    assert worst == Decimal(prompt + DEFAULT_MAX_TOKENS) * 15 / 1_000_000
    # The cost cap reckons the same allowance: a cap the 8,192 fit under admits the model.
    capped = await planner.plan(request({**body, "faregate": {"max_cost_usd": str(worst)}}))
    assert [c.model.name for c in capped.candidates] == ["sonnet"]
    # The client's own max_tokens is what is sent, and held, above the default as below it.
    for asked in (100, 20_000):
        limited = {**body, "max_tokens": asked}
        _, held = await worst_case(await planner.plan(request(limited)), request(limited))
        assert held == prompt + asked


@pytest.mark.parametrize(
    "hints",
    [
        {"tier": "gold"},
        {"task": "dance"},
        {"max_cost_usd": -1},
        {"max_cost_usd": "lots"},
        # Past what Decimal's arithmetic holds: normalising it for the cache key was a 500.
        {"max_cost_usd": "1e9999999"},
        {"max_cost_usd": 1e300},
        # A misspelt hint: ignored, it left the request without the cap its client meant to set.
        {"max_cost": 0.01},
        {"Tier": "economy"},
    ],
)
async def test_bad_hints_are_400(planner: Planner, hints: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        await planner.plan(request({"model": "smart", "faregate": hints}))


def test_route_to_unknown_model_fails_at_start() -> None:
    s = settings(routes={"r": {"chain": ["nope"]}})
    with pytest.raises(ConfigError, match="unknown model or route 'nope'"):
        Planner(build_catalog(s), s.routes, s.routing)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"retries": -1}, "routes.r.retries"),
        ({"max_cost_usd": 0}, "routes.r.max_cost_usd"),
        ({"max_cost_usd": "-0.01"}, "routes.r.max_cost_usd"),
        ({"failover_p99_ms": -5}, "routes.r.failover_p99_ms"),
    ],
)
def test_a_routes_numbers_are_bounded_at_start(extra: dict[str, Any], where: str) -> None:
    """A route's retries of -1 gave every step zero calls (every request a 502 naming no attempt);
    a cap of zero or below refused every request. Both are refused when the config loads."""
    with pytest.raises(ConfigError, match=where):
        settings(routes={"r": {"chain": ["cheap"], **extra}})


@pytest.mark.parametrize("route", ["anthropic/claude-2", "Anthropic/Claude-2"])
def test_a_route_named_like_a_broad_catalog_model_fails_at_start(route: str) -> None:
    """The broad catalog's models are looked up in any case and routes exactly: a route with a
    broad model's name, in any spelling, took that model's requests (configured models are checked
    when the config loads: tests/test_config.py)."""
    s = settings(routes={route: {"chain": ["cheap"]}}, catalog={"broad": True})
    with pytest.raises(ConfigError, match="already model 'anthropic/claude-2'"):
        Planner(build_catalog(s), s.routes, s.routing)


def test_route_loop_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="loop"):
        settings(routes={"x": {"chain": ["y"]}, "y": {"chain": ["x"]}})


async def test_open_breaker_skips_offer_and_503_when_all_open() -> None:
    s = settings()
    health = HealthBoard(BreakerSettings(consecutive_failures=2, cooldown_s=60))
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(2):
        health.failure("b/mid")
    assert await names(planner, {"model": "mid"}) == ["a/mid"]
    for _ in range(2):
        health.failure("a/mid")
    with pytest.raises(ModelUnavailable, match="circuit breaker open") as info:
        await planner.plan(request({"model": "mid"}))
    # The client is told when a breaker lets a call through again (the SDKs wait it out rather
    # than retry into the same 503 within a second or two): at most the cool-down.
    assert 1 <= int(info.value.headers["Retry-After"]) <= 60


def test_an_offer_says_when_its_breakers_let_a_call_through_again() -> None:
    health = HealthBoard(BreakerSettings(consecutive_failures=1, cooldown_s=30))
    assert health.reopens_in("a/mid", 100.0) == 0.0  # never failed
    for _ in range(2):  # unattributed failures: each from a key of its own (shared_min_keys 2)
        health.breaker("a/mid").record(False, 100.0)
    assert health.reopens_in("a/mid", 110.0) == 20.0
    # A key's own breaker opened later keeps that key out longer than the shared one.
    health.own_breaker("a/mid", "k", create=True).record(False, 115.0)  # type: ignore[union-attr]
    assert health.reopens_in("a/mid", 110.0, "k") == 35.0
    assert health.reopens_in("a/mid", 130.0) == 0.0
    assert health.breaker("a/mid").allow(130.0)  # half-open: its probe is out, its verdict soon
    assert health.reopens_in("a/mid", 131.0) == 0.0


async def test_a_breaker_opening_removes_an_offer_from_a_remembered_plan() -> None:
    """The offers a tier may use are remembered per model after the first plan; breakers are still
    read on every request: one opening takes its offer out, closing puts it back."""
    s = settings(routes={"r": {"chain": ["mid"]}})
    health = HealthBoard(BreakerSettings(consecutive_failures=2, cooldown_s=60))
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(2):  # remembered for the model, by name and through a route
        assert sorted(await names(planner, {"model": "mid"})) == ["a/mid", "b/mid"]
        assert sorted(await names(planner, {"model": "r"})) == ["a/mid", "b/mid"]
    for _ in range(2):
        health.failure("b/mid")
    assert await names(planner, {"model": "mid"}) == ["a/mid"]
    assert await names(planner, {"model": "r"}) == ["a/mid"]
    health.success("b/mid", 10.0)
    assert sorted(await names(planner, {"model": "mid"})) == ["a/mid", "b/mid"]
    for _ in range(2):
        health.failure("a/mid")
        health.failure("b/mid")
    with pytest.raises(ModelUnavailable, match="circuit breaker open"):
        await planner.plan(request({"model": "r"}))


async def test_remembered_offers_follow_a_model_whose_offers_change() -> None:
    """A catalog being built adds offers to a model (catalog/broad.py) or replaces them
    (evals/replay/routes.py): a remembered entry is made again, not served stale."""
    s = settings()
    planner = Planner(build_catalog(s), s.routes, s.routing, HealthBoard(BreakerSettings()))
    assert sorted(await names(planner, {"model": "mid"})) == ["a/mid", "b/mid"]
    mid = planner.resolve("mid")
    kept = mid.offers[0]
    mid.offers.pop()
    assert await names(planner, {"model": "mid"}) == [f"{kept.provider}/mid"]
    mid.offers = [replace(kept, provider="b")]
    assert await names(planner, {"model": "mid"}) == ["b/mid"]


async def test_at_the_same_price_the_offer_with_the_cheaper_prompt_cache_goes_first() -> None:
    """Two sellers at the same input and output prices, one with a cache-read discount (as
    deepseek-v4-pro's siliconflow and deepseek offers): the discounted one is never dearer, so it is
    tried first, whatever order the config lists them in."""
    offers = [{"provider": "a"}, {"provider": "b", "cache_read": "0.1"}]
    s = settings(models={**MODELS, "cached": model("1", offers=offers)})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    assert await names(planner, {"model": "cached"}) == ["b/cached", "a/cached"]


async def test_latency_choice_prefers_faster_offer() -> None:
    s = settings(routes={"fast": {"chain": ["mid"], "offer_choice": "latency"}})
    health = HealthBoard(BreakerSettings())
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(5):
        health.success("a/mid", 10.0)
        health.success("b/mid", 500.0)
    assert (await names(planner, {"model": "fast"}))[0] == "a/mid"


async def test_latency_choice_breaks_a_tie_towards_the_cheaper_offer() -> None:
    """Power of two choices draws two offers at random; when their latencies tie (none measured
    yet, as on a fresh gateway), the cheaper one goes first, not the one drawn first."""
    s = settings(routes={"fast": {"chain": ["mid"], "offer_choice": "latency"}})
    planner = Planner(build_catalog(s), s.routes, s.routing, HealthBoard(BreakerSettings()))
    firsts = {(await names(planner, {"model": "fast"}))[0] for _ in range(40)}
    assert firsts == {"b/mid"}  # b sells mid at 1, a at 2


async def test_p99_failover_demotes_slow_offer() -> None:
    s = settings(routes={"r": {"chain": ["mid"], "failover_p99_ms": 100}})
    health = HealthBoard(BreakerSettings())
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(10):
        health.success("b/mid", 900.0)
    assert await names(planner, {"model": "r"}) == ["a/mid", "b/mid"]


def test_breaker_opens_probes_and_closes() -> None:
    breaker = Breaker(BreakerSettings(consecutive_failures=3, cooldown_s=10))
    for _ in range(3):
        assert breaker.allow(0)
        breaker.record(False, 0)
    assert breaker.state == OPEN and not breaker.allow(5)
    assert breaker.allow(11) and breaker.state == HALF_OPEN
    assert not breaker.allow(11), "one probe at a time"
    breaker.record(False, 11)
    assert breaker.state == OPEN
    assert breaker.allow(22)
    breaker.record(True, 22)
    assert breaker.state == CLOSED


def test_breaker_opens_on_error_rate() -> None:
    breaker = Breaker(BreakerSettings(consecutive_failures=100, error_rate=0.5, window=10, min_calls=10))
    for i in range(10):
        breaker.record(i % 2 == 0, 0)
    assert breaker.state == OPEN


async def test_prompt_size_bound_and_exact() -> None:
    size = PromptSize([{"role": "user", "content": "hello world"}])
    assert size.upper_bound >= await size.exact()
    assert await size.at_most(100)


async def test_a_legacy_function_call_in_the_history_counts_in_the_prompt(planner: Planner) -> None:
    """An assistant message's `function_call` (the functions API before tool_calls) is rendered
    into the prompt and billed like a tool call: the bound and the count include it, so a history
    carrying a long one does not pass for a small prompt (context fits, holds)."""
    arguments = "word " * 2000
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": arguments}},
        {"role": "function", "name": "f", "content": "ok"},
    ]
    size = PromptSize(messages)
    assert size.upper_bound >= len(arguments) and await size.exact() >= 2000
    with pytest.raises(InvalidRequest, match="does not fit the context window"):
        await planner.plan(request({"model": "tiny", "messages": messages}))


# -- the attempt loop, with scripted providers at the Provider seam ---------------------------


class Scripted:
    """A provider that plays back a list of outcomes (an exception or a Completion)."""

    def __init__(self, name: str, outcomes: list[Any]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.calls: list[UpstreamCall] = []

    async def complete(self, call: UpstreamCall) -> Completion:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else ok()
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Completion)
        return outcome

    async def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        for chunk in outcome or [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]:
            yield chunk

    async def close(self) -> None:
        pass


def ok(text: str = "fine") -> Completion:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }
    return Completion(body, Usage(10, 2))


def empty() -> Completion:
    return Completion({"choices": []}, Usage(10, 0))


def runner_for(providers: dict[str, Scripted], **routing: Any) -> tuple[Planner, AttemptRunner]:
    s = settings(routing={"backoff_base_s": 0.001, "backoff_max_s": 0.002, **routing})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of(providers), 5.0, s.routing, health)
    return planner, runner


async def test_retry_then_fallback_then_success() -> None:
    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)] * 2)
    b = Scripted("b", [ok("from b")])
    planner, runner = runner_for({"a": a, "b": b})
    plan = await planner.plan(request({"models": ["big", "mid"]}))
    served = await runner.complete(request({"models": ["big", "mid"]}), plan)
    assert served.completion.body["choices"][0]["message"]["content"] == "from b"
    assert [(x.provider, x.outcome) for x in served.attempts] == [
        ("a", "server_error"),
        ("a", "server_error"),
        ("b", "ok"),
    ]
    assert runner.retries == 1 and runner.fallbacks == 1


async def test_a_verifications_retries_and_fallbacks_are_counted_apart_from_users() -> None:
    """faregate_retries_total and faregate_fallbacks_total are read as what users' requests met:
    a quality verification's shadow call that retried and fell over was counted in them too."""
    from prometheus_client import CollectorRegistry, generate_latest

    from faregate.telemetry.metrics import StateCollector

    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)] * 2)
    b = Scripted("b", [ok("from b")])
    planner, runner = runner_for({"a": a, "b": b})
    shadow = replace(request({"models": ["big", "mid"]}), verification=True)
    served = await runner.complete(shadow, await planner.plan(shadow))
    assert [x.provider for x in served.attempts] == ["a", "a", "b"]
    assert runner.retries == 0 and runner.fallbacks == 0
    assert runner.verification_retries == 1 and runner.verification_fallbacks == 1
    registry = CollectorRegistry()
    registry.register(StateCollector(counters=runner))
    text = generate_latest(registry).decode()
    assert "faregate_retries_total 0.0" in text and "faregate_fallbacks_total 0.0" in text
    assert "faregate_verification_retries_total 1.0" in text
    assert "faregate_verification_fallbacks_total 1.0" in text


async def test_a_candidate_whose_breaker_refuses_the_call_is_no_fallback() -> None:
    """The fallbacks counter counts moves from a failed call to another offer's call, as the
    record's fallback flag does: a candidate whose breaker opened since the plan was made is
    passed over without a call, and neither moving past it nor onto it is a fallback."""
    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)])
    b = Scripted("b", [ok("from b")])
    planner, runner = runner_for({"a": a, "b": b}, retries=0, breaker={"consecutive_failures": 1})
    req = request({"models": ["big", "mid"]})
    plan = await planner.plan(req)  # a/big, then mid's offers: b/mid (cheaper), a/mid
    for _ in range(2):  # from two callers (shared_min_keys): it opens after the plan
        runner.health.failure("a/big")
    served = await runner.complete(req, plan)
    assert [(x.provider, x.model, x.outcome) for x in served.attempts] == [("b", "mid", "ok")]
    assert attempt_summary(served.attempts)[1] == 0 and runner.fallbacks == 0

    planner, runner = runner_for({"a": a, "b": b}, retries=0, breaker={"consecutive_failures": 1})
    req = request({"models": ["cheap", "big", "mid"]})
    plan = await planner.plan(req)
    for _ in range(2):
        runner.health.failure("a/big")
    served = await runner.complete(req, plan)  # cheap fails, big is refused, b/mid answers
    assert [(x.model, x.outcome) for x in served.attempts] == [("cheap", "server_error"), ("mid", "ok")]
    assert attempt_summary(served.attempts)[1] == 1 and runner.fallbacks == 1


async def test_a_retry_the_breaker_refuses_is_no_retry() -> None:
    """The retries counter counts calls made again to the same offer, as the record's retry flag
    does: a failure that opens the offer's breaker leaves its retry uncalled (the next candidate
    is tried instead), and that retry is not counted."""
    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)])
    b = Scripted("b", [ok("from b")])
    breaker = {"consecutive_failures": 1, "shared_min_keys": 1}
    planner, runner = runner_for({"a": a, "b": b}, retries=1, breaker=breaker)
    req = request({"models": ["cheap", "mid"]})
    served = await runner.complete(req, await planner.plan(req))
    assert [(x.provider, x.outcome) for x in served.attempts] == [("a", "server_error"), ("b", "ok")]
    assert attempt_summary(served.attempts)[2] == 0 and runner.retries == 0


async def test_empty_200_falls_back_and_its_usage_is_billed() -> None:
    a = Scripted("a", [empty(), empty()])
    b = Scripted("b", [ok()])
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"]})
    served = await runner.complete(req, await planner.plan(req))
    failed = [x for x in served.attempts if x.outcome == "empty"]
    assert len(failed) == 2 and all(
        x.cost == Decimal(10) * Decimal("0.1") / Decimal(1_000_000) for x in failed
    )


async def test_tool_call_with_blank_content_is_not_empty() -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                }
            }
        ]
    }
    a = Scripted("a", [Completion(body, Usage(5, 5))])
    planner, runner = runner_for({"a": a})
    req = request({"model": "cheap"})
    served = await runner.complete(req, await planner.plan(req))
    assert served.attempts[-1].outcome == "ok"


async def test_retry_after_is_honoured_or_skipped_when_too_long() -> None:
    a = Scripted("a", [UpstreamFailure("rate_limited", "429", status=429, retry_after=60)])
    b = Scripted("b", [ok()])
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"]})
    served = await runner.complete(req, await planner.plan(req))
    assert [x.outcome for x in served.attempts] == ["rate_limited", "ok"], "a 60 s Retry-After moves on"
    a2 = Scripted("a", [UpstreamFailure("rate_limited", "429", status=429, retry_after=0.01), ok("again")])
    planner, runner = runner_for({"a": a2})
    req = request({"model": "cheap"})
    served = await runner.complete(req, await planner.plan(req))
    assert served.completion.body["choices"][0]["message"]["content"] == "again"


async def test_client_error_is_not_retried_or_fallen_back() -> None:
    a = Scripted("a", [UpstreamRejected(400, "a rejected the request: bad tool schema")])
    b = Scripted("b", [ok()])
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"]})
    with pytest.raises(UpstreamRejected):
        await runner.complete(req, await planner.plan(req))
    assert not b.calls


async def test_all_fail_lists_every_attempt() -> None:
    a = Scripted("a", [UpstreamFailure("connection", "reset")] * 4)
    b = Scripted("b", [UpstreamFailure("timeout", "no response head within 1.0s")] * 2)
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"]})
    with pytest.raises(UpstreamFailed) as info:
        await runner.complete(req, await planner.plan(req))
    message = info.value.message
    assert "cheap via a: connection" in message and "mid via b: timeout" in message
    assert info.value.status == 502


async def test_every_offer_rate_limited_tells_the_client_the_shortest_wait_they_gave() -> None:
    """Every call failed for want of capacity: the client's error carries a Retry-After, the
    shortest wait any offer asked for in its last answer (the SDKs wait it out before their own
    retry), whole seconds rounded up."""

    def limited(seconds: float | None, status: int = 429) -> UpstreamFailure:
        kind = "rate_limited" if status == 429 else "server_error"
        return UpstreamFailure(kind, f"HTTP {status}", status=status, retry_after=seconds)

    async def failed(
        a_says: list[UpstreamFailure], b_says: list[UpstreamFailure], **routing: Any
    ) -> UpstreamFailed:
        planner, runner = runner_for({"a": Scripted("a", a_says), "b": Scripted("b", b_says)}, **routing)
        req = request({"models": ["cheap", "mid"]})  # a/cheap, then mid's offers: b/mid, a/mid
        with pytest.raises(UpstreamFailed) as info:
            await runner.complete(req, await planner.plan(req))
        return info.value

    # a/cheap asks for 0.01 s (waited out, retried), then 20 s; b/mid for 7.2 s, a/mid for 9 s.
    error = await failed([limited(0.01), limited(20), limited(9)], [limited(7.2)])
    assert error.status == 502 and error.headers["Retry-After"] == "8"
    # A 503 may say how long too; one that does not (its wait unknown), or any other failure: none.
    error = await failed([limited(30), limited(30)], [limited(2, 503)], retries=0)
    assert error.headers["Retry-After"] == "2"
    error = await failed([limited(30), limited(30)], [limited(None, 503)], retries=0)
    assert "Retry-After" not in error.headers
    error = await failed([limited(30), limited(30)], [UpstreamFailure("connection", "reset")], retries=0)
    assert "Retry-After" not in error.headers


async def test_breaker_stops_calls_to_a_dead_offer() -> None:
    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)] * 100)
    b = Scripted("b", [ok()] * 100)
    planner, runner = runner_for({"a": a, "b": b}, retries=0, breaker={"consecutive_failures": 3})
    for _ in range(10):
        req = request({"models": ["cheap", "mid"]})
        await runner.complete(req, await planner.plan(req))
    assert len(a.calls) == 3


async def test_input_a_providers_moderation_flags_falls_over_but_opens_no_breaker() -> None:
    """OpenRouter's 403 for flagged input: another provider may serve it, but the offer and the
    gateway's key are fine, and a client can send such input at will: a few flagged prompts opened
    the key's breaker for the offer, and then every request of that key skipped it."""
    flagged = UpstreamFailure("server_error", "moderation", status=403, content_flagged=True)
    b = Scripted("b", [flagged] * 4)
    a = Scripted("a", [])
    planner, runner = runner_for({"a": a, "b": b}, breaker={"consecutive_failures": 2, "shared_min_keys": 1})
    for _ in range(4):
        req = request({"model": "mid"})
        req.key_id = "key_a"
        served = await runner.complete(req, await planner.plan(req))
        assert [x.provider for x in served.attempts] == ["b", "a"]  # falls over, no retry on b
    req = request({"model": "mid"})
    req.key_id = "key_a"
    served = await runner.complete(req, await planner.plan(req))
    assert served.candidate.offer.provider == "b", "flagged input opened the offer's breaker"
    assert runner.health.breaker("b/mid").state == CLOSED


async def test_stream_falls_back_before_content_and_not_after() -> None:
    cut = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    a = Scripted("a", [cut, cut])
    b = Scripted("b", [None])
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"], "stream": True})
    opened = await runner.open_stream(req, await planner.plan(req))
    assert opened.candidate.offer.provider == "b"
    assert [x.outcome for x in opened.attempts] == ["truncated", "truncated", "ok"]
    assert b.calls[0].body["stream_options"] == {"include_usage": True}


async def test_stream_finished_without_content_bills_the_usage_after_its_finish() -> None:
    # OpenAI's order: the finish_reason chunk, then the usage-only chunk (include_usage). A stream
    # that finishes with nothing in it was billed all the same: the usage after the finish counts.
    blank = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}},
    ]
    a = Scripted("a", [blank, blank])
    b = Scripted("b", [None])
    planner, runner = runner_for({"a": a, "b": b})
    req = request({"models": ["cheap", "mid"], "stream": True})
    opened = await runner.open_stream(req, await planner.plan(req))
    failed = [x for x in opened.attempts if x.outcome == "empty"]
    assert len(failed) == 2 and all(
        x.cost == Decimal(10) * Decimal("0.1") / Decimal(1_000_000) for x in failed
    ), [(x.outcome, x.cost) for x in opened.attempts]


async def test_a_probe_stream_with_content_closes_the_breaker_while_it_runs() -> None:
    # A stream that has brought content is the upstream answering: the half-open breaker closes
    # then, not when the stream ends (minutes later, the offer refused to everyone meanwhile).
    a = Scripted("a", [UpstreamFailure("server_error", "HTTP 500", status=500)])
    planner, runner = runner_for(
        {"a": a}, retries=0, breaker={"consecutive_failures": 1, "cooldown_s": 0.01, "shared_min_keys": 1}
    )
    req = request({"model": "cheap"})
    with pytest.raises(UpstreamFailed):
        await runner.complete(req, await planner.plan(req))
    assert runner.health.breaker("a/cheap").state == OPEN
    await asyncio.sleep(0.02)
    streamed = request({"model": "cheap", "stream": True})
    opened = await runner.open_stream(streamed, await planner.plan(streamed))  # the probe
    assert runner.health.breaker("a/cheap").state == CLOSED
    again = request({"model": "cheap"})
    served = await runner.complete(again, await planner.plan(again))
    assert served.attempts[-1].outcome == "ok"
    await opened.aclose()


async def test_a_full_upstream_queue_falls_back_to_the_next_candidate() -> None:
    # Provider a's queue refuses (upstream_limits): like an open breaker, the offer cannot be
    # called now, and the next candidate can; only with nothing else to try is it the client's 429.
    a = Scripted("a", [ok("from a")])
    b = Scripted("b", [])
    s = settings(routing={"retries": 0})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    limiter = UpstreamLimiter({"b": UpstreamQueueSettings(max_concurrent=1, max_queued=0, timeout_s=0.05)})
    runner = AttemptRunner(ProviderRegistry.of({"a": a, "b": b}), 5.0, s.routing, health, limiter)
    held = await limiter.acquire("b", STANDARD)  # b's one slot is taken
    try:
        req = request({"model": "mid"})
        plan = await planner.plan(req)
        assert [c.offer.provider for c in plan.candidates] == ["b", "a"]
        served = await runner.complete(req, plan)
        assert served.completion.body["choices"][0]["message"]["content"] == "from a"
        with pytest.raises(RateLimited):
            await runner.complete(req, replace(plan, candidates=plan.candidates[:1]))
    finally:
        held.release()
    assert not b.calls


async def test_a_verifications_call_in_flight_never_makes_a_user_wait_for_an_upstream_slot() -> None:
    # A verification must never delay a user's response. b takes one user call at a time; a shadow
    # call is in flight at b (it had a free slot) when a user's request comes: the user is served
    # at once, beside it, not after it. A shadow call has its own slot (`verification_slots`),
    # and a second one waits for that slot, not for a user's.
    class Held(Scripted):
        """b: a shadow call is answered only once `release` is set; users' calls at once."""

        def __init__(self) -> None:
            super().__init__("b", [])
            self.release = asyncio.Event()

        async def complete(self, call: UpstreamCall) -> Completion:
            self.calls.append(call)
            if "shadow" in str(call.body["messages"]):
                await self.release.wait()
                return ok("shadow served")
            return ok("user served")

    b = Held()
    s = settings(routing={"retries": 0})
    planner = Planner(build_catalog(s), s.routes, s.routing)
    limiter = UpstreamLimiter({"b": UpstreamQueueSettings(max_concurrent=1, max_queued=1, timeout_s=30)})
    runner = AttemptRunner(ProviderRegistry.of({"b": b}), 30.0, s.routing, None, limiter)
    gate = limiter.gates["b"]

    async def at_b(req: ChatRequest) -> Plan:
        plan = await planner.plan(req)
        return replace(plan, candidates=[c for c in plan.candidates if c.offer.provider == "b"])

    async def until(done: Any, what: str) -> None:
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError(what)

    asked = request({"model": "mid", "messages": [{"role": "user", "content": "shadow"}]})
    shadow = shadow_request(asked, "mid")
    shadow_task = asyncio.create_task(runner.complete(shadow, await at_b(shadow)))
    await until(lambda: len(b.calls) == 1, "the shadow call never reached b")
    second = asyncio.create_task(runner.complete(shadow, await at_b(shadow)))
    await until(lambda: gate.snapshot()["verifications_queued"] == 1, "the second shadow call never queued")
    user = request({"model": "mid"})
    user_served = await runner.complete(user, await at_b(user))  # not behind the shadow call
    assert user_served.completion.body["choices"][0]["message"]["content"] == "user served"
    assert not shadow_task.done() and gate.active == 0 and gate.queued == 0
    b.release.set()
    for served in await asyncio.gather(shadow_task, second):
        assert served.completion.body["choices"][0]["message"]["content"] == "shadow served"
    assert gate.served_verification == 2 and gate.served_standard == 1
    assert gate.snapshot()["verifications_active"] == 0


async def test_a_providers_404_falls_back_at_once_and_counts_against_its_offer() -> None:
    # The provider does not know the offer's upstream model (providers/upstream_failures.py):
    # asking it again says the same, another provider selling the model may serve it.
    not_found = UpstreamFailure("server_error", "the provider does not serve this model", status=404)
    a = Scripted("a", [ok("from a")])
    b = Scripted("b", [not_found])
    s = settings(routing={"retries": 2})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of({"a": a, "b": b}), 5.0, s.routing, health)
    req = request({"model": "mid"})
    plan = await planner.plan(req)
    assert [c.offer.provider for c in plan.candidates] == ["b", "a"]
    served = await runner.complete(req, plan)
    assert served.completion.body["choices"][0]["message"]["content"] == "from a"
    assert [(x.provider, x.outcome, x.status) for x in served.attempts] == [
        ("b", "server_error", 404),
        ("a", "ok", None),
    ]
    assert len(b.calls) == 1  # not retried
    assert health.breaker("b/mid").consecutive_failures == 1


@pytest.mark.parametrize("status", [401, 403, 402, 400, 429, 413])
async def test_a_refused_provider_key_falls_back_at_once_and_counts_against_its_offer(status: int) -> None:
    # The provider refused the gateway's own key, or our account with it is out of credit (402,
    # Anthropic's 400 "credit balance is too low", OpenAI's 429 insufficient_quota: a server_error,
    # not a rate limit, in providers/upstream_failures.py), or the request is more than our
    # account's per-minute allowance (Groq's 413, OpenAI's 429 "Request too large for"): asked
    # again half a second later it refuses again, so the retries' backoff only delays the fallback.
    refused = UpstreamFailure(
        "server_error", "provider authentication failed or account needs payment", status=status
    )
    a = Scripted("a", [ok("from a")])
    b = Scripted("b", [refused, refused, refused])
    s = settings(routing={"retries": 2})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of({"a": a, "b": b}), 5.0, s.routing, health)
    req = request({"model": "mid"})
    plan = await planner.plan(req)
    assert [c.offer.provider for c in plan.candidates] == ["b", "a"]
    served = await runner.complete(req, plan)
    assert served.completion.body["choices"][0]["message"]["content"] == "from a"
    assert [(x.provider, x.outcome, x.status) for x in served.attempts] == [
        ("b", "server_error", status),
        ("a", "ok", None),
    ]
    assert len(b.calls) == 1  # not retried
    assert runner.retries == 0
    assert health.breaker("b/mid").consecutive_failures == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_the_deadline_reached_in_an_upstream_queue_is_no_failure_of_the_offer(stream: bool) -> None:
    # The request's deadline passes while it waits for one of b's slots: b was never called, so
    # its breaker (open here at one failure) must not hear of it, as for a queue's own timeout.
    b = Scripted("b", [])
    s = settings(routing={"retries": 0, "breaker": {"consecutive_failures": 1}})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    limiter = UpstreamLimiter({"b": UpstreamQueueSettings(max_concurrent=1, max_queued=5, timeout_s=30)})
    runner = AttemptRunner(ProviderRegistry.of({"b": b}), 0.2, s.routing, health, limiter)
    held = await limiter.acquire("b", STANDARD)  # b's one slot is taken for longer than the request
    try:
        req = request({"model": "mid", "stream": stream})
        plan = await planner.plan(req)
        plan = replace(plan, candidates=[c for c in plan.candidates if c.offer.provider == "b"])
        with pytest.raises((RateLimited, UpstreamFailed)):
            if stream:
                await runner.open_stream(req, plan)
            else:
                await runner.complete(req, plan)
    finally:
        held.release()
    assert not b.calls
    assert health.breaker("b/mid").consecutive_failures == 0
    assert health.breaker("b/mid").state == CLOSED


async def test_a_stream_that_waited_for_an_upstream_slot_keeps_to_the_request_deadline() -> None:
    # The wait for one of b's slots comes out of the request's time: the stream's call gets only
    # what is left after it, and opening it ends at the request's deadline, as a whole call does.
    class Silent(Scripted):
        async def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
            self.calls.append(call)
            await asyncio.sleep(5)  # sends nothing
            yield {}

    b = Silent("b", [])
    s = settings(routing={"retries": 0})
    limiter = UpstreamLimiter({"b": UpstreamQueueSettings(max_concurrent=1, max_queued=5, timeout_s=30)})
    runner = AttemptRunner(ProviderRegistry.of({"b": b}), 1.0, s.routing, None, limiter)
    held = await limiter.acquire("b", STANDARD)
    asyncio.get_running_loop().call_later(0.5, held.release)  # b's slot frees up halfway to the deadline
    req = request({"model": "mid", "stream": True})
    plan = await Planner(build_catalog(s), s.routes, s.routing).plan(req)
    plan = replace(plan, candidates=[c for c in plan.candidates if c.offer.provider == "b"])
    with pytest.raises(UpstreamFailed) as info:
        await runner.open_stream(req, plan)
    elapsed = time.perf_counter() - req.started
    assert info.value.status == 504
    assert elapsed < 1.25  # the deadline (1 s), not 1 s after the slot was granted (1.5 s)
    (sent,) = b.calls
    assert sent.total_timeout_s <= 0.55
    assert sent.first_byte_timeout_s <= 0.55


@pytest.mark.parametrize("stream", [False, True])
async def test_a_probe_taken_since_the_plan_was_made_is_a_503_not_an_empty_502(stream: bool) -> None:
    # Two requests plan while a's breaker has cooled down: each plan keeps a's offer (it may be
    # probed), but the one probe goes to the first request to call. The other finds no candidate
    # it may call, and no upstream was called for it: that is the plan's own "every breaker open"
    # 503, not a 502 saying "All 0 upstream attempt(s) failed".
    release, called = asyncio.Event(), asyncio.Event()

    class Hanging(Scripted):
        async def complete(self, call: UpstreamCall) -> Completion:
            self.calls.append(call)
            called.set()
            await release.wait()
            return ok()

    a = Hanging("a", [])
    planner, runner = runner_for(
        {"a": a}, retries=0, breaker={"consecutive_failures": 1, "cooldown_s": 0.01, "shared_min_keys": 1}
    )
    runner.health.failure("a/cheap")
    assert runner.health.breaker("a/cheap").state == OPEN
    await asyncio.sleep(0.02)
    first, second = request({"model": "cheap"}), request({"model": "cheap", "stream": stream})
    first_plan, second_plan = await planner.plan(first), await planner.plan(second)
    probe = asyncio.create_task(runner.complete(first, first_plan))
    await called.wait()
    try:
        with pytest.raises(UpstreamFailed) as info:
            if stream:
                await runner.open_stream(second, second_plan)
            else:
                await runner.complete(second, second_plan)
    finally:
        release.set()
        await probe
    assert (info.value.status, info.value.code) == (503, "model_unavailable")
    assert info.value.message == "No candidate can serve this request: circuit breaker open for a/cheap."
    assert info.value.attempts == [] and len(a.calls) == 1
    # The probe's verdict may come at any moment: the client may try again in a second.
    assert info.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize("route", [{"failover_p99_ms": 100}, {"offer_choice": "latency"}])
async def test_an_offer_demoted_for_its_latency_is_tried_again_after_the_cool_down(
    route: dict[str, Any],
) -> None:
    # b (the cheaper seller of mid) had a slow spell: demoted, it is only called when a fails, so
    # its latency is never measured again. Once its figures are older than the breaker's cool-down
    # they say nothing about now: it is first again (as an open breaker lets a probe through), and
    # the figures start afresh from its next call, demoting it again only if that is slow too.
    s = settings(routes={"r": {"chain": ["mid"], **route}}, routing={"breaker": {"cooldown_s": 30}})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    for _ in range(10):
        health.success("a/mid", 10.0)
        health.success("b/mid", 900.0)
    assert await names(planner, {"model": "r"}) == ["a/mid", "b/mid"]
    health.stats("b/mid").last_at -= 31  # b's last call ended more than a cool-down ago
    assert await names(planner, {"model": "r"}) == ["b/mid", "a/mid"]
    health.success("b/mid", 5.0)  # fast again: its slow spell no longer counts
    assert await names(planner, {"model": "r"}) == ["b/mid", "a/mid"]
    health.stats("b/mid").last_at -= 31
    health.success("b/mid", 900.0)  # still slow: demoted again at once
    assert await names(planner, {"model": "r"}) == ["a/mid", "b/mid"]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("context_length_exceeded", "This model's maximum context length is 1000 tokens."),  # OpenAI
        ("invalid_request_error", "This model's maximum context length is 1000 tokens. However, you"),
        (None, "prompt is too long: 1203 tokens > 1000 maximum"),  # Anthropic
    ],
)
async def test_a_prompt_an_upstream_finds_too_long_for_its_window_falls_back_to_the_next_model(
    code: str | None, message: str
) -> None:
    # The plan fitted the prompt by the gateway's own count, an estimate (and the upstream's
    # tokenizer is its own): tiny's upstream says the prompt overflows its window after all. That is
    # no fault of the client's, who asked for [tiny, big]: big's larger window serves it.
    too_long = UpstreamRejected(400, f"a rejected the request: {message}", code=code)
    a = Scripted("a", [too_long, ok("from big")])
    planner, runner = runner_for({"a": a})
    req = request({"models": ["tiny", "big"]})
    served = await runner.complete(req, await planner.plan(req))
    assert served.completion.body["choices"][0]["message"]["content"] == "from big"
    assert [(x.model, x.outcome, x.status) for x in served.attempts] == [
        ("tiny", "rejected", 400),
        ("big", "ok", None),
    ]
    assert runner.health.breaker("a/tiny").consecutive_failures == 0  # the prompt's, not a's


async def test_a_prompt_every_upstream_finds_too_long_is_their_400_listing_each_attempt() -> None:
    refusal = "This model's maximum context length is 1000 tokens."
    a = Scripted("a", [UpstreamRejected(400, refusal, code="context_length_exceeded")] * 2)
    planner, runner = runner_for({"a": a})
    req = request({"models": ["tiny", "big"]})
    with pytest.raises(UpstreamRejected) as info:
        await runner.complete(req, await planner.plan(req))
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
    assert [(x.model, x.outcome) for x in info.value.attempts] == [("tiny", "rejected"), ("big", "rejected")]


@pytest.mark.parametrize(
    "asked",
    [{"logprobs": True}, {"n": 2}, {"presence_penalty": 0.5}, {"temperature": 1.5}],
)
async def test_a_request_the_messages_wire_cannot_carry_falls_back_to_a_model_that_can(
    asked: dict[str, Any],
) -> None:
    """The Messages translation refuses what Messages cannot say (logprobs, n > 1, penalties, a
    temperature above 1) before anything is sent: a 400 that ended the request when the client's
    list (or a route, or a fallback) had a Claude model first, though the next model serves it."""
    providers = {
        **PROVIDERS,
        "c": {"base_url": "http://127.0.0.1:3/v1", "enabled": True, "protocol": "anthropic"},
    }
    s = settings(providers=providers, models={**MODELS, "claude": model("0.05", offers=[{"provider": "c"}])})
    pool = make_upstream_pool(s)
    try:
        claude = AnthropicProvider("c", s.providers["c"], pool)
        a = Scripted("a", [ok("from cheap")])
        health = HealthBoard(s.routing.breaker)
        planner = Planner(build_catalog(s), s.routes, s.routing, health)
        runner = AttemptRunner(ProviderRegistry.of({"a": a, "c": claude}), 5.0, s.routing, health)
        req = request({"models": ["claude", "cheap"], **asked})
        served = await runner.complete(req, await planner.plan(req))
        assert served.completion.body["choices"][0]["message"]["content"] == "from cheap"
        assert [(x.model, x.outcome) for x in served.attempts] == [("claude", "rejected"), ("cheap", "ok")]
        assert health.breaker("c/claude").consecutive_failures == 0  # nothing was sent
        # Claude alone: the translation's 400, naming what it cannot carry.
        req = request({"model": "claude", **asked})
        with pytest.raises(UpstreamRejected) as info:
            await runner.complete(req, await planner.plan(req))
        assert info.value.status == 400 and info.value.param == next(iter(asked))
    finally:
        await pool.close()


@pytest.mark.parametrize("cap", ["1_000", "1e3", "NaN", "\uff15", "0x10", "", True])
def test_a_cost_cap_that_is_no_plain_amount_is_refused(cap: object) -> None:
    """The x-faregate-max-cost-usd header (or the hint as text) took what Python's Decimal reads:
    "1_000", "1e3", other scripts' digits; a plain decimal amount only, or a JSON number."""
    from faregate.routing.routes import parse_hints

    with pytest.raises(InvalidRequest, match="max_cost_usd"):
        parse_hints({"max_cost_usd": cap})


@pytest.mark.parametrize(("cap", "value"), [(" 0.5 ", "0.5"), ("2", "2"), (1e-05, "0.00001"), (3, "3")])
def test_a_cost_cap_is_a_plain_amount_or_a_number(cap: object, value: str) -> None:
    from faregate.routing.routes import parse_hints

    assert parse_hints({"max_cost_usd": cap}).max_cost_usd == Decimal(value)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_models_own_timeouts_win_over_its_providers(stream: bool) -> None:
    """A provider serving a fast chat model and a reasoning model that thinks for minutes before
    its first token: the reasoning model's own first-byte and idle timeouts are its calls', the
    other model keeps the provider's, and both still end at the request's deadline."""
    from faregate.config import ProviderSettings

    thinker = model("1", first_byte_timeout_s=300, stream_idle_timeout_s=240)
    s = settings(models={**MODELS, "thinker": thinker})
    catalog = build_catalog(s)
    provider = ProviderSettings(base_url="http://x", first_byte_timeout_s=20, stream_idle_timeout_s=30)
    registry = ProviderRegistry.of({"a": object()}, provider)  # type: ignore[dict-item]
    runner = AttemptRunner(registry, 1000.0, s.routing)

    def timeouts(name: str, time_left: float) -> tuple[float, float | None]:
        req = request({"model": name, "stream": stream})
        found = catalog.models[name]
        candidate = Candidate(found, found.offers[0])
        call = runner.build_call(req, candidate, registry.entry("a"), time_left)
        return call.first_byte_timeout_s, call.stream_idle_timeout_s

    assert timeouts("thinker", 1000.0) == (300, 240 if stream else None)
    assert timeouts("cheap", 1000.0) == (20, 30 if stream else None)
    assert timeouts("thinker", 100.0)[0] == 100.0  # the request's time left, as for the provider's
