"""Global API as a built-in provider: with GLOBAL_API_KEY set and nothing else configured but
where it lives (the simulator stands in for https://global-apis.com/v1), the gateway routes
its models there under Global API's names, at the makers' prices; a Pro key (ga_pro_...) opens
the Pro channel's dedicated offers to premium keys only."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from faregate.types import Price, Usage
from harness import GatewayProcess, SimProcess, create_key, run_gateway, run_sim

pytestmark = pytest.mark.e2e


def point_at(sim: SimProcess) -> str:
    # Only the base URL changes: the provider, its offers and prices are the built-in ones.
    base = f"http://127.0.0.1:{sim.port}/v1"
    return f"providers:\n  globalapi: {{base_url: {base!r}}}\n  globalapi_pro: {{base_url: {base!r}}}\n"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("global-api-sim"), "strict_models: false\n") as process:
        yield process


@pytest.fixture(scope="module")
def standard_gateway(
    stand_in: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("global-api")
    with run_gateway(workdir, None, point_at(stand_in), env={"GLOBAL_API_KEY": "ga_std_test"}) as process:
        yield process


@pytest.fixture(scope="module")
def pro_gateway(stand_in: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("global-api-pro")
    with run_gateway(workdir, None, point_at(stand_in), env={"GLOBAL_API_KEY": "ga_pro_test"}) as process:
        yield process


def sim_models(sim: SimProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=10) as response:
        return dict(json.load(response)["models"])


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.base_url, max_retries=0)


def ask(gateway: GatewayProcess, key: str, model: str) -> tuple[str, str, Decimal, Usage]:
    raw = client(gateway, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello from the gateway"}]
    )
    body = raw.parse()
    assert body.choices[0].message.content == "hello from the gateway"
    assert body.usage is not None
    usage = Usage(body.usage.prompt_tokens, body.usage.completion_tokens)
    return (
        raw.headers["x-faregate-provider"],
        raw.headers["x-faregate-model"],
        Decimal(raw.headers["x-faregate-cost-usd"]),
        usage,
    )


def test_the_key_alone_routes_to_global_api_at_the_makers_price(
    standard_gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    key = create_key(standard_gateway.store_path, "std")
    before = sim_models(stand_in)
    provider, model, cost, usage = ask(standard_gateway, key, "deepseek-v4-flash")
    assert (provider, model) == ("globalapi", "deepseek-ai/DeepSeek-V4-Flash")
    assert cost == Price(Decimal("0.14"), Decimal("0.28")).cost(usage)
    provider, _, _, _ = ask(standard_gateway, key, "glm-4-plus")
    assert provider == "globalapi"
    after = sim_models(stand_in)
    # The upstream saw Global API's own model names.
    for name in ("deepseek-ai/DeepSeek-V4-Flash", "glm-4-plus"):
        assert after.get(name, 0) == before.get(name, 0) + 1


def test_a_standard_global_api_key_leaves_the_pro_channel_shut(
    standard_gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    premium = create_key(standard_gateway.store_path, "pro", premium=True)
    before = sim_models(stand_in)
    provider, _, _, _ = ask(standard_gateway, premium, "deepseek-v3.2")
    assert provider == "globalapi"
    assert sim_models(stand_in).get("Pro/deepseek-ai/DeepSeek-V3.2", 0) == before.get(
        "Pro/deepseek-ai/DeepSeek-V3.2", 0
    )


def test_a_pro_key_serves_premium_keys_on_the_pro_channel(
    pro_gateway: GatewayProcess, stand_in: SimProcess
) -> None:
    premium = create_key(pro_gateway.store_path, "premium", premium=True)
    standard = create_key(pro_gateway.store_path, "standard")
    before = sim_models(stand_in)
    provider, model, cost, usage = ask(pro_gateway, premium, "deepseek-v3.2")
    assert (provider, model) == ("globalapi_pro", "deepseek-ai/DeepSeek-V3.2")
    assert cost == Price(Decimal("0.28"), Decimal("0.42")).cost(usage)
    provider, _, _, _ = ask(pro_gateway, standard, "deepseek-v3.2")
    assert provider == "globalapi"
    after = sim_models(stand_in)
    assert after["Pro/deepseek-ai/DeepSeek-V3.2"] == before.get("Pro/deepseek-ai/DeepSeek-V3.2", 0) + 1
    assert after["deepseek-ai/DeepSeek-V3.2"] == before.get("deepseek-ai/DeepSeek-V3.2", 0) + 1


def test_the_gateway_runs_on_global_api_not_on_a_simulator(standard_gateway: GatewayProcess) -> None:
    log = standard_gateway.read_log()
    assert "faregate listening on" in log and "(simulated providers)" not in log
    models = client(standard_gateway, create_key(standard_gateway.store_path, "list")).models.list()
    assert "deepseek-ai/DeepSeek-V4-Flash" in {m.id for m in models.data}
