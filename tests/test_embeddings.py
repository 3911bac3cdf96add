"""Embeddings in process: embedding models in the catalog and config, the planner keeping chat and
embeddings apart, the OpenAI-wire provider's `embed` against a live HTTP server (the transport
seam), the attempt loop's `embed` with scripted providers, and the exact-cache key."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from faregate.cache.keying import embeddings_key
from faregate.cache.service import ResponseCache
from faregate.cache.stores import MemoryStore
from faregate.catalog import build_catalog
from faregate.catalog.models import Offer
from faregate.config import CacheSettings, ProviderSettings, load_settings, parse_settings
from faregate.errors import ConfigError, InvalidRequest, UpstreamFailed, UpstreamFailure
from faregate.providers.anthropic import AnthropicProvider
from faregate.providers.base import UpstreamCall
from faregate.providers.http import ConnectionPool
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.providers.registry import ProviderRegistry, make_upstream_pool
from faregate.routing.attempts import AttemptRunner
from faregate.routing.candidate_fit import ModelUnavailable
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Planner
from faregate.server.app import Gateway, build_gateway, create_app
from faregate.server.parse import parse_chat_request
from faregate.types import Completion, Price, Usage

EMBEDDING = {"kind": "embedding", "input": "0.02", "offers": [{"provider": "a"}, {"provider": "b"}]}
CHAT = {"input": "1", "output": "2", "offers": [{"provider": "a"}]}


def settings(**extra: Any) -> Any:
    return parse_settings(
        {
            "providers": {
                "a": {"base_url": "http://127.0.0.1:1/v1"},
                "b": {"base_url": "http://127.0.0.1:2/v1"},
                "claude": {"base_url": "http://127.0.0.1:3/v1", "protocol": "anthropic"},
            },
            "models": {"embed-s": {**EMBEDDING, "aliases": ["es"]}, "chatty": CHAT},
            "catalog": {"broad": False},
            **extra,
        }
    )


# -- catalog and config -------------------------------------------------------------------------


def test_the_built_in_embedding_models_are_priced_per_input_token() -> None:
    catalog = build_catalog(load_settings(overrides={"catalog": {"broad": False}}))
    small, large = catalog.get("text-embedding-3-small"), catalog.get("text-embedding-3-large")
    assert small is not None and large is not None and small.embeds and large.embeds
    assert small.list_price == Price(Decimal("0.02"), Decimal(0))
    assert large.list_price == Price(Decimal("0.13"), Decimal(0))
    assert [(o.provider, o.upstream_model) for o in small.offers] == [
        ("openai", "text-embedding-3-small"),
        ("openrouter", "openai/text-embedding-3-small"),
    ]
    chat = catalog.get("gpt-4o-mini")
    assert chat is not None and not chat.embeds and chat.kind == "chat"


def test_an_embedding_model_needs_no_output_price_and_may_not_have_one() -> None:
    model = build_catalog(settings()).get("embed-s")
    assert model is not None and model.list_price == Price(Decimal("0.02"), Decimal(0))
    with pytest.raises(ConfigError, match="priced per input token"):
        settings(models={"embed-s": {**EMBEDDING, "output": "0.5"}})


def test_a_route_may_not_name_an_embedding_model() -> None:
    with pytest.raises(ConfigError, match="'es' is an embedding model"):
        settings(routes={"cheap": {"chain": ["chatty", "es"]}})


# -- the planner keeps chat and embeddings apart -------------------------------------------------


def planner_for(**extra: Any) -> Planner:
    s = settings(**extra)
    return Planner(build_catalog(s), s.routes, s.routing, HealthBoard(s.routing.breaker))


async def test_a_chat_request_naming_an_embedding_model_is_a_400() -> None:
    planner = planner_for()
    for body in ({"model": "es"}, {"model": "chatty", "models": ["chatty", "embed-s"]}):
        request = parse_chat_request({**body, "messages": [{"role": "user", "content": "hi"}]}, {}, "r")
        with pytest.raises(InvalidRequest, match="is an embedding model") as refused:
            await planner.plan(request)
        assert refused.value.status == 400 and refused.value.param == "model"


def test_an_embeddings_plan_refuses_a_chat_model_and_skips_providers_without_embeddings() -> None:
    planner = planner_for()
    with pytest.raises(InvalidRequest, match=r"not an embedding model; .* takes one of: embed-s"):
        planner.embedding_plan("chatty", premium=False, key_id=None, serves=lambda _: True)
    plan = planner.embedding_plan("es", premium=False, key_id=None, serves=lambda p: p != "a")
    assert [c.offer.provider for c in plan.candidates] == ["b"]
    with pytest.raises(ModelUnavailable, match="no enabled provider of embed-s serves embeddings"):
        planner.embedding_plan("es", premium=False, key_id=None, serves=lambda _: False)


def test_an_open_breaker_takes_an_offer_out_of_the_embeddings_plan() -> None:
    planner = planner_for()
    for _ in range(planner.routing.breaker.consecutive_failures):
        planner.health.failure("a/embed-s", "k1")
        planner.health.failure("a/embed-s", "k2")
    plan = planner.embedding_plan("embed-s", premium=False, key_id="k1", serves=lambda _: True)
    assert [c.offer.provider for c in plan.candidates] == ["b"]


async def test_the_registry_says_which_providers_embed() -> None:
    registry = ProviderRegistry.create(settings())
    try:
        assert isinstance(registry.get("claude"), AnthropicProvider)
        assert registry.embeds("a") and not registry.embeds("claude") and not registry.embeds("nobody")
    finally:
        await registry.close()


# -- the provider's embed, against a live server ----------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[tuple[str, Any]], dict[str, web.Response]]]:
    seen: list[tuple[str, Any]] = []
    replies: dict[str, web.Response] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, orjson.loads(await request.read())))
        return replies.pop("next", None) or web.json_response(
            {"object": "list", "data": [{"index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": 7}}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", handle)
    app.router.add_post("/v1/messages", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("/v1")), seen, replies
    await server.close()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    made = make_upstream_pool()
    yield made
    await made.close()


def embeddings_call(provider: str = "a") -> UpstreamCall:
    offer = Offer("embed-s", provider, "up-embed", Price(Decimal("0.02"), Decimal(0)), True)
    return UpstreamCall(offer, {"model": "up-embed", "input": ["hi"]}, False, 5.0, 5.0)


async def test_embed_posts_to_the_embeddings_path_and_reads_input_usage(
    upstream: tuple[str, list[tuple[str, Any]], dict[str, web.Response]], pool: ConnectionPool
) -> None:
    url, seen, _ = upstream
    provider = OpenAICompatibleProvider("a", ProviderSettings(base_url=url), pool)
    assert provider.embeds
    completion = await provider.embed(embeddings_call())
    assert seen == [("/v1/embeddings", {"model": "up-embed", "input": ["hi"]})]
    assert completion.usage == Usage(7, 0) and completion.body["data"][0]["embedding"] == [0.5]


async def test_embed_maps_failures_as_complete_does(
    upstream: tuple[str, list[tuple[str, Any]], dict[str, web.Response]], pool: ConnectionPool
) -> None:
    url, _, replies = upstream
    provider = OpenAICompatibleProvider("a", ProviderSettings(base_url=url), pool)
    replies["next"] = web.json_response(
        {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "2"}
    )
    with pytest.raises(UpstreamFailure) as limited:
        await provider.embed(embeddings_call())
    assert (limited.value.kind, limited.value.retry_after) == ("rate_limited", 2.0)


async def test_the_messages_wire_has_no_embeddings(pool: ConnectionPool) -> None:
    provider = AnthropicProvider("claude", ProviderSettings(base_url="http://127.0.0.1:9/v1"), pool)
    assert not provider.embeds


# -- the attempt loop's embed ---------------------------------------------------------------------


class Embedder:
    """A provider that plays back outcomes for `embed` (an exception or a Completion)."""

    embeds = True

    def __init__(self, name: str, outcomes: list[Any]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.calls: list[UpstreamCall] = []

    async def embed(self, call: UpstreamCall) -> Completion:
        self.calls.append(call)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Completion)
        return outcome

    async def complete(self, call: UpstreamCall) -> Completion:
        raise AssertionError("an embeddings request never completes a chat")

    def stream(self, call: UpstreamCall) -> AsyncIterator[dict[str, Any]]:
        raise AssertionError("an embeddings request never streams")

    async def close(self) -> None:
        pass


class Job:
    def __init__(self) -> None:
        self.request_id, self.key_id, self.premium, self.started = "req_1", "k", False, time.perf_counter()
        self.verification = False


def vectors(n: int, tokens: int = 6) -> Completion:
    return Completion({"data": [{"index": i, "embedding": [0.1]} for i in range(n)]}, Usage(tokens, 0))


async def test_missing_vectors_fall_back_to_the_next_provider_and_are_billed() -> None:
    a = Embedder("a", [vectors(1), vectors(1)])
    b = Embedder("b", [vectors(2)])
    s = settings(routing={"backoff_base_s": 0.001, "backoff_max_s": 0.002})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of({"a": a, "b": b}), 5.0, s.routing, health)
    plan = planner.embedding_plan("embed-s", premium=False, key_id="k", serves=lambda _: True)
    body = {"model": "es", "input": ["x", "y"], "dimensions": 8, "faregate": {"cache": False}}
    served = await runner.embed(Job(), body, 2, plan)
    assert served.candidate.offer.provider == "b"
    assert [(x.provider, x.outcome) for x in served.attempts] == [("a", "empty"), ("a", "empty"), ("b", "ok")]
    # A provider that billed a failed call is billed for it: 6 tokens at $0.02/1M, twice.
    assert [x.cost for x in served.attempts[:2]] == [Decimal(6) * Decimal("0.02") / 1_000_000] * 2
    # Sent as written, with the upstream's model name and without the gateway's own fields.
    assert b.calls[0].body == {"model": "embed-s", "input": ["x", "y"], "dimensions": 8}


async def test_every_provider_failing_is_one_error_listing_every_attempt() -> None:
    failure = UpstreamFailure("server_error", "HTTP 500", status=500)
    a, b = Embedder("a", [failure, failure]), Embedder("b", [failure, failure])
    s = settings(routing={"backoff_base_s": 0.001, "backoff_max_s": 0.002})
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of({"a": a, "b": b}), 5.0, s.routing, health)
    plan = planner.embedding_plan("embed-s", premium=False, key_id="k", serves=lambda _: True)
    with pytest.raises(UpstreamFailed) as failed:
        await runner.embed(Job(), {"model": "embed-s", "input": "x"}, 1, plan)
    assert [x.provider for x in failed.value.attempts] == ["a", "a", "b", "b"]


async def test_an_embedding_models_own_first_byte_timeout_wins_over_its_providers() -> None:
    slow = {**EMBEDDING, "first_byte_timeout_s": 200}
    s = settings(models={"embed-s": slow, "embed-t": EMBEDDING})
    a = Embedder("a", [vectors(1), vectors(1)])
    planner = Planner(build_catalog(s), s.routes, s.routing)
    runner = AttemptRunner(ProviderRegistry.of({"a": a}), 500.0, s.routing)
    for name in ("embed-s", "embed-t"):
        plan = planner.embedding_plan(name, premium=False, key_id="k", serves=lambda p: p == "a")
        await runner.embed(Job(), {"model": name, "input": "x"}, 1, plan)
    # The model's own, then (unset) the provider's default.
    assert [c.first_byte_timeout_s for c in a.calls] == [200, 60]


# -- the exact cache --------------------------------------------------------------------------


def test_the_embeddings_key_covers_what_changes_the_answer() -> None:
    base = {"input": ("a", "b"), "dimensions": None, "encoding_format": "float"}
    key = embeddings_key(base, "embed-s", "key:k")
    assert key == embeddings_key(dict(base), "embed-s", "key:k")
    for changed in ({"input": ("a",)}, {"dimensions": 8}, {"encoding_format": "base64"}):
        assert embeddings_key({**base, **changed}, "embed-s", "key:k") != key
    assert embeddings_key(base, "other", "key:k") != key
    assert embeddings_key(base, "embed-s", "key:other") != key


def test_the_cache_decides_embeddings_without_temperature_and_honours_no_store() -> None:
    cache = ResponseCache(CacheSettings(), MemoryStore())
    material = {"input": ("a",), "dimensions": None, "encoding_format": "float"}
    decision = cache.decide_embeddings(material, {}, "k", {}, "embed-s")
    assert decision.status == "lookup" and decision.read and decision.write and decision.scope == "key:k"
    assert (
        cache.decide_embeddings(material, {}, "k", {"Cache-Control": "no-store"}, "embed-s").status
        == "bypass"
    )
    assert cache.decide_embeddings(material, {"cache": False}, "k", {}, "embed-s").status == "bypass"
    shared = cache.decide_embeddings(material, {"cache": {"namespace": "shared"}}, "k", {}, "embed-s")
    assert shared.scope == "shared" and shared.key != decision.key


# -- the endpoint in process, on an upstream that reports no usage -----------------------------


@asynccontextmanager
async def gateway_before(
    upstream_embeddings: Handler, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[tuple[TestClient, str, Gateway]]:
    """The gateway in process (a client of it, a key, the gateway) before an upstream whose
    POST /v1/embeddings is `upstream_embeddings`, selling one embedding model, `embed-x`."""
    app = web.Application()
    app.router.add_post("/v1/embeddings", upstream_embeddings)
    upstream = TestServer(app, host="127.0.0.1", port=0)
    await upstream.start_server()
    monkeypatch.setenv("FAREGATE_MASTER_KEY", "fg-master-test-0123456789abcdefghijklmnop")
    settings = load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "providers": {"up": {"base_url": str(upstream.make_url("/v1"))}},
            "models": {"embed-x": {"kind": "embedding", "input": "0.5", "offers": [{"provider": "up"}]}},
            **overrides,
        }
    )
    try:
        gateway = await build_gateway(settings)
        try:
            _, key = await gateway.keys.create(name="t")
            async with TestClient(TestServer(create_app(gateway))) as client:
                yield client, key, gateway
        finally:
            await gateway.close()
    finally:
        await upstream.close()


async def test_an_answer_without_usage_is_costed_from_our_own_count(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faregate import light_tokens

    async def no_usage(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        data = [{"object": "embedding", "index": i, "embedding": [0.25]} for i in range(len(body["input"]))]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    async with gateway_before(no_usage, tmp_path, monkeypatch) as (client, key, _):
        texts = ["count these tokens ourselves", "and these"]
        response = await client.post(
            "/v1/embeddings",
            json={"model": "embed-x", "input": texts},
            headers={"Authorization": f"Bearer {key}"},
        )
        body = await response.json()
        assert response.status == 200, body
        counted = sum(light_tokens.count_text(t) for t in texts)  # the default estimate
        assert body["usage"]["prompt_tokens"] == counted and body["usage"]["estimated"] is True
        cost = Decimal(response.headers["x-faregate-cost-usd"])
        assert cost == Decimal(counted) * Decimal("0.5") / 1_000_000


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "hi", "encoding": "float"},
        {"model": "m", "input": "hi", "faregate": {"tier": "cheap"}},
        {"model": "m", "input": "hi", "models": ["m"]},
    ],
)
def test_the_openapi_document_refuses_the_embeddings_bodies_the_server_refuses(body: dict[str, Any]) -> None:
    # A client built from GET /openapi.json must not be told a body is valid that gets a 400.
    import jsonschema

    from faregate.server.openapi import openapi_document

    # OpenAPI 3.0's schemas are JSON Schema draft 4 (a boolean exclusiveMinimum).
    validator = jsonschema.Draft4Validator(openapi_document()["components"]["schemas"]["EmbeddingsRequest"])
    validator.validate({"model": "m", "input": "hi", "faregate": {"cache": False}})
    assert not validator.is_valid(body)


async def test_null_fields_are_read_as_left_out_and_not_sent_upstream(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM (since 1.80.11) sends `encoding_format: null` when its caller sets none, as OpenAI
    takes it: the default (float). It was a 400 here; and a null passed upstream is refused by
    strict OpenAI-wire servers (vLLM, TEI, DeepInfra), so the upstream gets the field left out."""
    sent: list[dict[str, Any]] = []

    async def embeddings(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        sent.append(body)
        data = [{"object": "embedding", "index": 0, "embedding": [0.25]}]
        return web.json_response({"object": "list", "data": data, "usage": {"prompt_tokens": 1}})

    async with gateway_before(embeddings, tmp_path, monkeypatch) as (client, key, _):
        asked = {
            "model": "embed-x",
            "input": "hi",
            "encoding_format": None,
            "dimensions": None,
            "user": None,
        }
        response = await client.post("/v1/embeddings", json=asked, headers={"Authorization": f"Bearer {key}"})
        body = await response.json()
        assert response.status == 200, body
        assert body["data"][0]["embedding"] == [0.25]
        assert sent == [{"model": "embed-x", "input": "hi"}]


async def test_an_embeddings_answer_is_kept_up_to_cache_max_entry_bytes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embeddings answers over 128 KiB were never kept, whatever `cache.max_entry_bytes` allows:
    an operator who raised it for batches of vectors still had every batch a miss."""
    import asyncio

    async def vectors(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        data = [
            {"object": "embedding", "index": i, "embedding": [0.123456789] * 1536}
            for i in range(len(body["input"]))
        ]
        usage = {"prompt_tokens": 8, "total_tokens": 8}
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})

    max_entry = {"cache": {"max_entry_bytes": 1024 * 1024}}
    async with gateway_before(vectors, tmp_path, monkeypatch, **max_entry) as (client, key, gateway):
        cache = gateway.pipeline.cache
        assert cache is not None

        async def embed() -> str:
            response = await client.post(
                "/v1/embeddings",
                json={"model": "embed-x", "input": ["a", "b", "c", "d", "e", "f", "g", "h"]},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status == 200, await response.text()
            assert len(await response.read()) > 128 * 1024
            return response.headers["x-faregate-cache"]

        assert await embed() == "miss"
        for _ in range(500):  # kept off the response's path: up to 5 s for the write
            if cache.writes:
                break
            await asyncio.sleep(0.01)
        assert await embed() == "hit"


async def test_the_hold_covers_inputs_the_light_estimate_counts_under_the_upstream(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold is a worst case. The light estimate counts a few texts under o200k (a table of
    numbers: 181 for 185); an embeddings hold of that count was under what OpenAI bills, so a key
    could spend past its credits and budgets. It is raised as a chat prompt's is (PromptSize's
    LIGHT_RESERVE_FACTOR); the usage estimated without an upstream's stays the plain count."""
    import json
    from pathlib import Path

    from faregate import light_tokens, tokens

    text = json.loads((Path(__file__).parent / "fixtures/estimate_texts.json").read_text())["numbers_table"]
    assert light_tokens.count_text(text) < tokens.count_text(text)  # the case this guards against

    async def billed_as_openai(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        billed = sum(tokens.count_text(t) for t in body["input"])
        data = [{"object": "embedding", "index": i, "embedding": [0.25]} for i in range(len(body["input"]))]
        usage = {"prompt_tokens": billed, "total_tokens": billed}
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})

    async with gateway_before(
        billed_as_openai, tmp_path, monkeypatch, accounts={"enabled": True, "new_key_credits_usd": "1"}
    ) as (
        client,
        key,
        gateway,
    ):
        admission = gateway.pipeline.admission
        held: list[Decimal] = []
        admit = admission.admit

        async def spied(key: Any, request: Any, worst_usd: Decimal, tokens_held: int) -> Any:
            held.append(worst_usd)
            return await admit(key, request, worst_usd, tokens_held)

        monkeypatch.setattr(admission, "admit", spied)
        response = await client.post(
            "/v1/embeddings",
            json={"model": "embed-x", "input": [text, text]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status == 200, await response.text()
        cost = Decimal(response.headers["x-faregate-cost-usd"])
        assert cost == Decimal(2 * tokens.count_text(text)) * Decimal("0.5") / 1_000_000
        (worst,) = held
        assert worst >= cost, (worst, cost)
