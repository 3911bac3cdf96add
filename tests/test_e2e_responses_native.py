"""`POST /v1/responses` passed through natively to a provider that speaks the Responses API
(`responses: true`, as the built-in `openai` provider is), by the openai SDK against real
processes: the simulator stands in for OpenAI (its /v1/responses) and for DeepSeek (its chat
endpoint). Its per-wire counts (GET /sim/stats) show which wire each upstream call came in on:
a Responses request to OpenAI goes upstream as a Responses request under the offer's upstream
model name, a fallback to DeepSeek is translated to chat, and the cost is exact either way."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from harness import (
    GatewayProcess,
    SimProcess,
    cache_written,
    create_key,
    run_gateway,
    run_sim,
    stored_record,
)

pytestmark = pytest.mark.e2e

SCRIPT = """
strict_models: false
defaults: {ttft_ms: 5, tokens_per_s: 0, tool_call: true}
models:
  gpt-4o: {faults: {unavailable: 1.0}}
"""
UPSTREAM = "gpt-4o-mini-2024-07-18"
INPUT, OUTPUT = Decimal(1), Decimal(2)  # USD per 1M tokens


def config(sim: SimProcess) -> str:
    base = f"http://127.0.0.1:{sim.port}/v1"
    return f"""
providers:
  openai: {{base_url: {base!r}}}
  deepseek: {{base_url: {base!r}}}
models:
  native-mini: {{input: {INPUT}, output: {OUTPUT}, offers: [{{provider: openai, upstream: {UPSTREAM}}}]}}
routes:
  gpt-then-deepseek: {{chain: [gpt-4o, deepseek-v4-flash]}}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("native-sim"), SCRIPT) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"OPENAI_API_KEY": "sk-openai-test", "DEEPSEEK_API_KEY": "sk-deepseek-test"}
    with run_gateway(tmp_path_factory.mktemp("native-gateway"), None, config(sim), env=env) as process:
        yield process


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(api_key=create_key(gateway.store_path), base_url=gateway.base_url, max_retries=0)


def stats(sim: SimProcess) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()
    return result


def counted(before: dict[str, Any], after: dict[str, Any], section: str) -> dict[str, int]:
    """What `section` of the simulator's stats (wires, models) gained between two reads."""
    names = set(before[section]) | set(after[section])
    gained = {name: after[section].get(name, 0) - before[section].get(name, 0) for name in names}
    return {name: n for name, n in gained.items() if n}


def exact_cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * INPUT + output_tokens * OUTPUT) / 1_000_000


def test_a_response_is_passed_through_natively(
    client: openai.OpenAI, sim: SimProcess, gateway: GatewayProcess
) -> None:
    before = stats(sim)
    raw = client.responses.with_raw_response.create(
        model="native-mini", instructions="Be brief.", input="hello native", metadata={"team": "a"}
    )
    after = stats(sim)
    # One upstream call, on the simulator's /v1/responses, under the offer's upstream name.
    assert counted(before, after, "wires") == {"responses": 1}
    assert counted(before, after, "models") == {UPSTREAM: 1}
    response = raw.parse()
    assert response.output_text == "hello native" and response.status == "completed"
    assert response.model == "native-mini" and response.metadata == {"team": "a"}
    assert response.usage is not None
    cost = Decimal(raw.headers["x-faregate-cost-usd"])
    assert cost == exact_cost(response.usage.input_tokens, response.usage.output_tokens) > 0
    assert Decimal(str((response.usage.model_extra or {})["cost"])) == cost
    row = stored_record(gateway, raw.headers["x-faregate-request-id"])
    assert row["wire"] == "responses" and Decimal(row["cost_usd"]) == cost
    assert row["model_used"] == "native-mini"


def test_a_stream_is_passed_through_natively(client: openai.OpenAI, sim: SimProcess) -> None:
    before = stats(sim)
    events = list(client.responses.create(model="native-mini", input="stream natively", stream=True))
    after = stats(sim)
    assert counted(before, after, "wires") == {"responses": 1}
    assert after["streams"] - before["streams"] == 1
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "stream natively"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.model == "native-mini" and final.usage is not None
    cost = (final.usage.model_extra or {})["cost"]
    assert Decimal(str(cost)) == exact_cost(final.usage.input_tokens, final.usage.output_tokens)


def test_function_calls_pass_through(client: openai.OpenAI, sim: SimProcess) -> None:
    tools: Any = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    ]
    before = stats(sim)
    response = client.responses.create(model="native-mini", input="weather?", tools=tools)
    assert counted(before, stats(sim), "wires") == {"responses": 1}
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_from_a_native_offer_is_translated(
    client: openai.OpenAI, sim: SimProcess, stream: bool
) -> None:
    """gpt-4o (OpenAI, native) answers 503; deepseek-v4-flash (chat wire) serves the request."""
    before = stats(sim)
    if stream:
        events = list(client.responses.create(model="gpt-then-deepseek", input="fall back", stream=True))
        assert events[-1].type == "response.completed"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        text = client.responses.create(model="gpt-then-deepseek", input="fall back").output_text
    after = stats(sim)
    assert text == "fall back"
    wires = counted(before, after, "wires")
    assert wires["chat"] == 1 and wires["responses"] >= 1  # the failing native call(s), retried
    assert set(counted(before, after, "models")) == {"gpt-4o", "deepseek-v4-flash"}


def test_a_passed_through_response_is_served_again_from_the_cache(
    client: openai.OpenAI, sim: SimProcess, gateway: GatewayProcess
) -> None:
    def ask() -> Any:
        return client.responses.with_raw_response.create(
            model="native-mini", input="cache me natively", temperature=0
        )

    with cache_written(gateway):
        first = ask()
    before = stats(sim)
    second = ask()
    assert counted(before, stats(sim), "wires") == {}  # no upstream call
    assert (first.headers["x-faregate-cache"], second.headers["x-faregate-cache"]) == ("miss", "hit")
    again, original = second.parse(), first.parse()
    # The upstream's own Response again (its id included), at no cost.
    assert again.id == original.id and again.output_text == "cache me natively"
    assert again.usage is not None and (again.usage.model_extra or {})["cost"] == 0
