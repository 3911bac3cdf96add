"""POST /v1/embeddings end to end: the official openai SDK's `client.embeddings.create` against a
gateway process whose OpenAI and OpenRouter providers are the simulator (a real process standing
in for api.openai.com and openrouter.ai, only their base URLs changed), at the built-in catalog's
embedding prices.

What is checked: every input form the SDK sends (a string, a list, token arrays, dimensions,
base64 and float), the exact cost (Decimal tokens x list price, in the header and usage.cost),
the record written, the exact cache (second time free), fallback from a failing OpenAI offer to
OpenRouter's offer of the same model, 402 when credits are short, 400 for the wrong kind of model
on either endpoint, and the listing.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import struct
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from harness import (
    MASTER_KEY,
    GatewayProcess,
    SimProcess,
    cache_written,
    health_counter,
    run_sim,
    stored_record,
    wait_until,
)
from servers import launch_gateway

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
SMALL = Decimal("0.02")  # text-embedding-3-small, USD per 1M input tokens
LARGE = Decimal("0.13")
MILLION = Decimal(1_000_000)
# OpenAI's own name for the large model always fails upstream; OpenRouter's name for it works.
SCRIPT = "defaults: {}\nmodels:\n  text-embedding-3-large:\n    faults: {server_error: 1.0}\n"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("embeddings-sim"), SCRIPT) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(stand_in: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    base = stand_in.base_url
    extra = (
        f"providers:\n  openai: {{base_url: {base!r}}}\n  openrouter: {{base_url: {base!r}}}\n"
        "accounts: {enabled: true}\n"
    )
    env = {"OPENAI_API_KEY": "sk-test", "OPENROUTER_API_KEY": "sk-or-test"}
    with launch_gateway(tmp_path_factory.mktemp("embeddings"), None, extra=extra, env=env) as process:
        yield process


def new_key(gateway: GatewayProcess, credits: str = "10", **policy: Any) -> tuple[str, str]:
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN) as client:
        response = client.post("/admin/keys", json={"name": "embed", "credits_usd": credits, **policy})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["api_key"]


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.base_url, max_retries=0)


def sim_models(sim: SimProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=10) as response:
        return dict(json.load(response)["models"])


def embed(gateway: GatewayProcess, key: str, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    raw = client(gateway, key).embeddings.with_raw_response.create(**kwargs)
    return raw.parse(), dict(raw.headers)


def test_every_input_form_is_embedded_and_costed_exactly(
    gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    _, key = new_key(gateway)
    before = sim_models(stand_in)
    forms: list[dict[str, Any]] = [
        {"input": "The food was delicious and the waiter was kind."},
        {"input": ["first text", "second text", "a third, longer text to embed"]},
        {"input": [1212, 318, 257, 1332]},
        {"input": [[1212, 318], [257, 1332, 13]]},
        {"input": "short vectors", "dimensions": 256},
        {"input": ["floats, not base64"], "encoding_format": "float"},
    ]
    for form in forms:
        answer, headers = embed(gateway, key, model="text-embedding-3-small", **form)
        items = form["input"]
        count = 1 if isinstance(items, str) or isinstance(items[0], int) else len(items)
        assert len(answer.data) == count
        # The SDK asks for base64 unless told otherwise and decodes it: same vectors either way.
        assert all(len(item.embedding) == form.get("dimensions", 1536) for item in answer.data)
        assert answer.model == "text-embedding-3-small"
        tokens = answer.usage.prompt_tokens
        if isinstance(items, list) and isinstance(items[0], int):
            assert tokens == len(items)
        cost = Decimal(headers["x-faregate-cost-usd"])
        assert cost == Decimal(tokens) * SMALL / MILLION
        assert Decimal(str(answer.usage.model_extra["cost"])) == cost
        assert (headers["x-faregate-provider"], headers["x-faregate-model"]) == (
            "openai",
            "text-embedding-3-small",
        )
        assert headers["x-faregate-attempts"] == "1" and headers["x-faregate-cache"] == "miss"
        assert headers["x-faregate-route"] == "text-embedding-3-small"
        row = stored_record(gateway, headers["x-faregate-request-id"])
        assert (row["model_used"], row["provider"], row["status"]) == (
            "text-embedding-3-small",
            "openai",
            200,
        )
        assert (row["prompt_tokens"], row["completion_tokens"]) == (tokens, 0)
        assert Decimal(row["cost_usd"]) == cost and row["empty_response"] == 0
        assert row["wire"] == "embeddings"
        # Measured against the model's own list price (the one offer here is at it): no saving.
        assert headers["x-faregate-baseline-cost-usd"] == headers["x-faregate-cost-usd"]
        assert Decimal(row["baseline_cost_usd"]) == cost
        assert answer.usage.model_extra["baseline_cost"] == float(cost)
    # The upstream saw OpenAI's own model name, once per request.
    assert (
        sim_models(stand_in).get("text-embedding-3-small", 0) == before.get("text-embedding-3-small", 0) + 6
    )


def test_the_hold_is_settled_to_the_exact_cost(gateway: GatewayProcess) -> None:
    key_id, key = new_key(gateway, credits="1")
    answer, headers = embed(gateway, key, model="text-embedding-3-large", input=["settle me", "exactly"])
    cost_nano = Decimal(headers["x-faregate-cost-usd"]) * 10**9
    assert cost_nano == Decimal(answer.usage.prompt_tokens) * LARGE * 1000 and cost_nano == int(cost_nano)

    def balance() -> int:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            return int(
                db.execute("SELECT balance_nano FROM accounts WHERE key_id = ?", (key_id,)).fetchone()[0]
            )

    wait_until(lambda: balance() == 10**9 - int(cost_nano), "the settlement")
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        assert db.execute("SELECT COUNT(*) FROM holds WHERE key_id = ?", (key_id,)).fetchone()[0] == 0


def test_base64_is_passed_through_as_sent(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway)
    body = {
        "model": "text-embedding-3-small",
        "input": "raw bytes",
        "encoding_format": "base64",
        "dimensions": 8,
    }
    response = httpx.post(
        f"{gateway.base_url}/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    vector = struct.unpack("<8f", base64.b64decode(response.json()["data"][0]["embedding"]))
    assert abs(sum(v * v for v in vector) - 1) < 1e-5  # the simulator's unit vectors


def test_the_second_time_is_a_free_cache_hit(gateway: GatewayProcess, stand_in: SimProcess) -> None:
    _, key = new_key(gateway)
    text = ["cache me once", "and twice"]
    with cache_written(gateway):  # written in the background, just after the answer
        first, headers = embed(gateway, key, model="text-embedding-3-small", input=text, dimensions=64)
    assert headers["x-faregate-cache"] == "miss"
    calls = sim_models(stand_in)["text-embedding-3-small"]
    second, headers = embed(gateway, key, model="text-embedding-3-small", input=text, dimensions=64)
    assert headers["x-faregate-cache"] == "hit" and headers["x-faregate-cost-usd"] == "0"
    assert second.usage.model_extra["cost"] == 0
    baseline = Decimal(headers["x-faregate-baseline-cost-usd"])
    assert baseline == Decimal(first.usage.prompt_tokens) * SMALL / MILLION > 0  # what the hit saved
    assert second.usage.model_extra["baseline_cost"] == first.usage.model_extra["baseline_cost"]
    assert [d.embedding for d in second.data] == [d.embedding for d in first.data]
    assert sim_models(stand_in)["text-embedding-3-small"] == calls
    row = stored_record(gateway, headers["x-faregate-request-id"])
    assert (row["cache_status"], Decimal(row["cost_usd"]), row["prompt_tokens"]) == (
        "hit",
        Decimal(0),
        first.usage.prompt_tokens,
    )
    assert Decimal(row["baseline_cost_usd"]) == baseline
    # Other dimensions are another answer: a miss.
    _, headers = embed(gateway, key, model="text-embedding-3-small", input=text, dimensions=32)
    assert headers["x-faregate-cache"] == "miss"


def test_a_batch_too_big_for_the_cache_is_not_kept(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway)
    batch = [f"document number {i}" for i in range(20)]  # 20 vectors as base64: about 170 KB
    before = health_counter(gateway, "cache_writes")
    _, headers = embed(gateway, key, model="text-embedding-3-small", input=batch)
    assert headers["x-faregate-cache"] == "miss"
    with cache_written(gateway):
        embed(gateway, key, model="text-embedding-3-small", input="a small one is kept")
    assert health_counter(gateway, "cache_writes") == before + 1
    _, headers = embed(gateway, key, model="text-embedding-3-small", input=batch)
    assert headers["x-faregate-cache"] == "miss"


def test_a_failing_provider_falls_back_to_another_provider_of_the_model(
    gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    _, key = new_key(gateway)
    answer, headers = embed(gateway, key, model="text-embedding-3-large", input=["falls back", "quietly"])
    assert len(answer.data) == 2
    assert (headers["x-faregate-provider"], headers["x-faregate-model"]) == (
        "openrouter",
        "text-embedding-3-large",
    )
    cost = Decimal(headers["x-faregate-cost-usd"])
    assert cost == Decimal(answer.usage.prompt_tokens) * LARGE / MILLION
    row = stored_record(gateway, headers["x-faregate-request-id"])
    attempts = json.loads(row["attempts"])
    assert [(a["provider"], a["outcome"]) for a in attempts][-1] == ("openrouter", "ok")
    assert Decimal(attempts[-1]["cost_usd"]) == cost  # the served call's own billed cost
    assert {a["provider"] for a in attempts[:-1]} == {"openai"}
    assert int(headers["x-faregate-attempts"]) == len(attempts) >= 2
    assert sim_models(stand_in).get("openai/text-embedding-3-large", 0) >= 1


def test_short_credits_are_refused_with_402_before_any_call(
    gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    key_id, key = new_key(gateway, credits="0.000001")
    before = sim_models(stand_in).get("text-embedding-3-large", 0)
    # About 20,000 tokens at $0.13/1M: $0.0026, far more than $0.000001.
    with pytest.raises(openai.APIStatusError) as refused:
        client(gateway, key).embeddings.create(
            model="text-embedding-3-large", input=["lorem ipsum dolor " * 5000]
        )
    assert refused.value.status_code == 402
    assert sim_models(stand_in).get("text-embedding-3-large", 0) == before
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        assert db.execute("SELECT COUNT(*) FROM holds WHERE key_id = ?", (key_id,)).fetchone()[0] == 0
        assert (
            db.execute("SELECT balance_nano FROM accounts WHERE key_id = ?", (key_id,)).fetchone()[0] == 1000
        )


def test_the_request_rate_limit_refuses_with_429_as_for_chat(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway, requests_per_minute=2)
    statuses: list[int] = []
    for i in range(6):
        try:
            _, headers = embed(gateway, key, model="text-embedding-3-small", input=f"rate limited {i}")
            assert headers["x-ratelimit-limit-requests"] == "2"
            statuses.append(200)
        except openai.RateLimitError as refused:
            assert refused.response.headers["Retry-After"]
            statuses.append(429)
    # Two a minute (a bucket refill may land during the loop).
    assert 2 <= statuses.count(200) <= 3 and statuses[:2] == [200, 200], statuses


def test_embeddings_are_in_the_metrics(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway)
    embed(gateway, key, model="text-embedding-3-small", input="counted in the metrics")
    metrics = httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", headers=ADMIN, timeout=30).text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("faregate_requests_total{") and 'model="text-embedding-3-small"' in line
    ]
    assert served and any('provider="openai"' in line and 'status="200"' in line for line in served), served
    assert any(
        line.startswith("faregate_cost_usd_total{") and 'model="text-embedding-3-small"' in line
        for line in metrics.splitlines()
    )


def test_the_wrong_kind_of_model_is_a_clear_400(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway)
    with pytest.raises(openai.BadRequestError) as chat_model:
        client(gateway, key).embeddings.create(model="gpt-4o-mini", input="hello")
    assert "not an embedding model" in chat_model.value.message
    assert "text-embedding-3-small" in chat_model.value.message
    with pytest.raises(openai.BadRequestError) as embedding_model:
        client(gateway, key).chat.completions.create(
            model="text-embedding-3-small", messages=[{"role": "user", "content": "hello"}]
        )
    assert "is an embedding model" in embedding_model.value.message
    with pytest.raises(openai.NotFoundError):
        client(gateway, key).embeddings.create(model="text-embedding-9", input="hello")


def test_the_listing_shows_embedding_models(gateway: GatewayProcess) -> None:
    _, key = new_key(gateway)
    listed = {m.id: m for m in client(gateway, key).models.list().data}
    small = listed["text-embedding-3-small"].model_extra
    assert small["kind"] == "embedding"
    assert small["pricing"]["input"] == "0.02" and Decimal(small["pricing"]["output"]) == 0
    assert [o["provider"] for o in small["offers"]] == ["openai", "openrouter"]
    assert listed["gpt-4o-mini"].model_extra["kind"] == "chat"


def test_the_simulator_refuses_more_dimensions_than_openai_gives(stand_in: SimProcess) -> None:
    # As OpenAI answers (3,072 at most, text-embedding-3-large's): a fuzzed 100,000,000 made the
    # simulator draw gigabytes, and every other request behind it timed out.
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 100_000_000}
    response = httpx.post(f"{stand_in.base_url}/embeddings", json=body, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["param"] == "dimensions"
