"""Claude over the Messages wire through the gateway's chat endpoint, the simulator's
/v1/messages standing in for Anthropic: the provider is chosen by configuration (protocol
anthropic), prompt-cache writes and reads come back in usage and are billed at their own
prices, and what Messages cannot say is a 400 naming the parameter."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from faregate.types import Price, Usage
from harness import GatewayProcess, SimProcess, create_key, run_gateway, run_sim

pytestmark = pytest.mark.e2e

HAIKU = Price(Decimal(1), Decimal(5), Decimal("0.10"), Decimal("1.25"), Decimal(2))
LONG = "You answer questions about the weather in one short sentence. " * 40


@pytest.fixture(scope="module")
def messages_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("anthropic-sim")) as process:
        yield process


@pytest.fixture(scope="module")
def claude_gateway(
    messages_sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    base = f"http://127.0.0.1:{messages_sim.port}/v1"
    config = f"providers:\n  anthropic: {{base_url: {base!r}}}\n"
    workdir = tmp_path_factory.mktemp("anthropic-gateway")
    with run_gateway(workdir, None, config, env={"ANTHROPIC_API_KEY": "sk-ant-test"}) as process:
        yield process


def messages_served(sim: SimProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=10) as response:
        return int(json.load(response)["models"].get("claude-haiku-4-5", 0))


def billed(usage: Any) -> Usage:
    details = usage.prompt_tokens_details
    return Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        cache_read_tokens=(details.cached_tokens or 0) if details else 0,
        cache_write_tokens=(getattr(details, "cache_write_tokens", None) or 0) if details else 0,
    )


def test_prompt_cache_tokens_are_billed_at_their_own_prices(
    claude_gateway: GatewayProcess, messages_sim: SimProcess
) -> None:
    client = openai.OpenAI(
        api_key=create_key(claude_gateway.store_path), base_url=claude_gateway.base_url, max_retries=0
    )
    messages: list[Any] = [
        {
            "role": "system",
            "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": "Is it sunny?"},
    ]
    before = messages_served(messages_sim)
    costs = []
    for expected in ("write", "read"):
        raw = client.chat.completions.with_raw_response.create(model="claude-haiku-4-5", messages=messages)
        body = raw.parse()
        assert raw.headers["x-faregate-provider"] == "anthropic"
        assert body.choices[0].message.content == "Is it sunny?"
        assert body.usage is not None
        usage = billed(body.usage)
        if expected == "write":
            assert usage.cache_write_tokens > 300 and usage.cache_read_tokens == 0
        else:
            assert usage.cache_read_tokens > 300 and usage.cache_write_tokens == 0
        cost = Decimal(raw.headers["x-faregate-cost-usd"])
        assert cost == HAIKU.cost(usage)
        costs.append(cost)
    # The cached prompt costs a tenth of its first, written (1.25x) price.
    assert costs[1] < costs[0] / 5
    assert messages_served(messages_sim) == before + 2


def test_a_stream_over_the_messages_wire(claude_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        api_key=create_key(claude_gateway.store_path), base_url=claude_gateway.base_url, max_retries=0
    )
    stream = client.chat.completions.create(
        model="claude-haiku-4-5",
        messages=[{"role": "user", "content": "stream over messages"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(text) == "stream over messages"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_what_messages_cannot_say_is_a_400(claude_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        api_key=create_key(claude_gateway.store_path), base_url=claude_gateway.base_url, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert "n > 1" in str(info.value)
    assert info.value.body["param"] == "n"  # type: ignore[index]


def test_a_cache_hit_says_the_prompt_cache_split_of_the_answer_it_replays(
    claude_gateway: GatewayProcess,
) -> None:
    """A hit is served with the usage of the answer it replays, cache reads included: it said the
    totals alone, so a Messages client was told every prompt token as uncached input (and, in one
    stream, `message_start` said the uncached count while `message_delta` said all of them)."""
    import httpx

    from harness import cache_written

    headers = {"x-api-key": create_key(claude_gateway.store_path)}
    system = [{"type": "text", "text": LONG + "(hits)", "cache_control": {"type": "ephemeral"}}]
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "system": system, "temperature": 0}
    url = claude_gateway.base_url + "/messages"

    def ask(question: str, **extra: Any) -> httpx.Response:
        asked = {**body, "messages": [{"role": "user", "content": question}], **extra}
        return httpx.post(url, json=asked, headers=headers, timeout=30)

    ask("Is it windy?", temperature=1)  # writes the prompt cache; not kept (not deterministic)
    with cache_written(claude_gateway):
        miss = ask("Is it sunny?")
    assert miss.headers["x-faregate-cache"] == "miss"
    usage = miss.json()["usage"]
    assert usage["cache_read_input_tokens"] > 300 and usage["input_tokens"] < 20

    hit = ask("Is it sunny?")
    assert hit.headers["x-faregate-cache"] == "hit"
    assert hit.json()["usage"] == {**usage, "cost": 0.0}

    stream = ask("Is it sunny?", stream=True)
    assert stream.headers["x-faregate-cache"] == "hit"
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: ")]
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert start["input_tokens"] == delta["input_tokens"] == usage["input_tokens"]
    assert delta["cache_read_input_tokens"] == usage["cache_read_input_tokens"]

    chat = openai.OpenAI(api_key=headers["x-api-key"], base_url=claude_gateway.base_url, max_retries=0)
    again = chat.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=20,
        temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Is it sunny?"}],  # type: ignore[list-item,misc]
    )
    assert again.headers["x-faregate-cache"] == "hit"
    served = again.parse().usage
    assert served is not None and served.prompt_tokens_details is not None
    assert served.prompt_tokens_details.cached_tokens == usage["cache_read_input_tokens"]
