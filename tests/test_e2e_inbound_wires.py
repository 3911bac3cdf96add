"""The gateway spoken to in Anthropic's Messages wire and OpenAI's Responses wire, by the
official SDKs, against real processes: the simulator stands in for Anthropic (its /v1/messages)
and for DeepSeek (its chat endpoint). Every rule of the chat path applies: a Messages request
may be served by a non-Claude model (and falls back to one inside a stream), prompt-cache
tokens are billed at their own prices, errors come in the client's wire's shape, and the record
says which wire a request came in on."""

from __future__ import annotations

import base64
import datetime
import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest

from faregate.catalog import build_catalog
from faregate.config import load_settings
from faregate.types import Price, Usage
from harness import (
    MASTER_KEY,
    GatewayProcess,
    SimProcess,
    cache_written,
    create_key,
    run_gateway,
    run_sim,
    stored_record,
)

pytestmark = pytest.mark.e2e

HAIKU = Price(Decimal(1), Decimal(5), Decimal("0.10"), Decimal("1.25"), Decimal(2))
LONG = "You answer questions about the weather in one short sentence. " * 40
# A 1x1 PNG.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()

SCRIPT = """
strict_models: false
defaults: {ttft_ms: 5, tokens_per_s: 0, tool_call: true}
models:
  claude-sonnet-5: {faults: {unavailable: 1.0}}
  claude-opus-4-5: {faults: {truncate: 1.0}, after_tokens: 0}
  inspect-chat: {answer: inspect}
  inspect-claude: {answer: inspect}
  overloaded-claude: {faults: {unavailable: 1.0}}
"""


def config(sim: SimProcess) -> str:
    base = f"http://127.0.0.1:{sim.port}/v1"
    return f"""
providers:
  anthropic: {{base_url: {base!r}}}
  deepseek: {{base_url: {base!r}}}
models:
  inspect-chat: {{input: 1, output: 2, offers: [{{provider: deepseek}}]}}
  inspect-claude: {{input: 1, output: 2, offers: [{{provider: anthropic}}]}}
  overloaded-claude: {{input: 1, output: 2, offers: [{{provider: anthropic}}]}}
routes:
  claude-then-deepseek: {{chain: [claude-sonnet-5, deepseek-v4-flash]}}
  cut-claude-then-deepseek: {{chain: [claude-opus-4-5, deepseek-v4-flash]}}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(tmp_path_factory.mktemp("wires-sim"), SCRIPT) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "DEEPSEEK_API_KEY": "sk-deepseek-test"}
    with run_gateway(tmp_path_factory.mktemp("wires-gateway"), None, config(sim), env=env) as process:
        yield process


@pytest.fixture(scope="module")
def key(gateway: GatewayProcess) -> str:
    return create_key(gateway.store_path)


@pytest.fixture
def claude(gateway: GatewayProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=f"http://127.0.0.1:{gateway.port}", max_retries=0)


@pytest.fixture
def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.base_url, max_retries=0)


def test_a_message_from_the_anthropic_sdk_with_x_api_key(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello over messages"}],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "hello over messages"
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-haiku-4-5"
    assert raw.headers["x-faregate-provider"] == "anthropic"
    cost = Decimal(raw.headers["x-faregate-cost-usd"])
    usage = message.usage
    assert cost == HAIKU.cost(Usage(usage.input_tokens, usage.output_tokens)) > 0
    assert (usage.model_extra or {})["cost"] == float(cost)
    row = stored_record(gateway, raw.headers["x-faregate-request-id"])
    assert row["wire"] == "messages" and row["status"] == 200
    assert Decimal(row["cost_usd"]) == cost
    # What the baseline model would have cost, as recorded: in the usage and a header.
    baseline = Decimal(raw.headers["x-faregate-baseline-cost-usd"])
    assert baseline == Decimal(row["baseline_cost_usd"]) > 0
    assert (usage.model_extra or {})["baseline_cost"] == float(baseline)


def test_the_anthropic_sdk_reads_the_request_id_of_answers_streams_and_errors(
    claude: anthropic.Anthropic,
) -> None:
    """The anthropic SDK gives an answer's `_request_id` and an error's `request_id` from
    `request-id`: the gateway's request id, the one its records and feedback know."""
    hello: Any = [{"role": "user", "content": "which request?"}]
    raw = claude.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=16, messages=hello)
    assert raw.parse()._request_id == raw.headers["x-faregate-request-id"] == raw.headers["x-request-id"]
    with claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5", max_tokens=16, messages=hello, stream=True
    ) as streamed:
        assert streamed.request_id == streamed.headers["x-faregate-request-id"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=hello)
    assert missing.value.request_id == missing.value.response.headers["x-faregate-request-id"]
    assert missing.value.request_id is not None and missing.value.request_id.startswith("req_")


def test_a_messages_request_served_by_a_non_claude_model(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model="deepseek-v4-flash", max_tokens=64, messages=[{"role": "user", "content": "any model"}]
    )
    assert raw.parse().content[0].text == "any model"  # type: ignore[union-attr]
    assert raw.headers["x-faregate-provider"] == "deepseek"
    assert raw.headers["x-faregate-model"] == "deepseek-ai/DeepSeek-V4-Flash"


async def test_the_async_client(gateway: GatewayProcess, key: str) -> None:
    client = anthropic.AsyncAnthropic(api_key=key, base_url=f"http://127.0.0.1:{gateway.port}", max_retries=0)
    message = await client.messages.create(
        model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "async hello"}]
    )
    assert message.content[0].text == "async hello"  # type: ignore[union-attr]
    async with client.messages.stream(
        model="deepseek-v4-flash", max_tokens=32, messages=[{"role": "user", "content": "async stream"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "async stream" and final.stop_reason == "end_turn"


def test_a_stream_with_its_cost_in_message_delta(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
    )
    events = list(raw.parse())
    request_id = raw.headers["x-faregate-request-id"]
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert text == "stream me"
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    cost = Decimal(str((delta.usage.model_extra or {})["cost"]))  # type: ignore[union-attr]
    baseline = (delta.usage.model_extra or {})["baseline_cost"]  # type: ignore[union-attr]
    row = stored_record(gateway, request_id)
    assert row["wire"] == "messages" and row["stream"] == 1
    assert baseline == float(Decimal(row["baseline_cost_usd"])) > 0
    assert abs(Decimal(row["cost_usd"]) - cost) < Decimal("1e-12")
    assert Decimal(row["cost_usd"]) == HAIKU.cost(Usage(row["prompt_tokens"], row["completion_tokens"]))


def test_a_stream_from_a_messages_upstream_starts_with_its_input_count(
    claude: anthropic.Anthropic, client: openai.OpenAI
) -> None:
    """message_start said input_tokens 0 though Anthropic's own message_start had the count: a
    client reading it before the end (a context meter) saw an empty prompt."""
    ask: Any = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "count me in"}]}
    events = list(claude.messages.create(**ask, max_tokens=64, stream=True))
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens > 0
    assert start.message.usage.input_tokens == delta.usage.input_tokens
    # A chat client served by the same upstream is not shown how it was carried.
    with client.chat.completions.with_streaming_response.create(**ask, stream=True) as response:
        body = b"".join(response.iter_bytes())
    assert b'"role":"assistant"' in body and b"input_tokens" not in body


def test_a_stream_from_a_chat_upstream_starts_with_the_gateways_input_count(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    """A chat upstream says its input count only at the end: message_start said input_tokens 0, so
    a client reading it live (a context meter) saw an empty prompt until then. It says the gateway's
    own count of the prompt; the SDK's accumulated message ends with the upstream's count."""
    long = [{"role": "user", "content": "count me in, " * 50}]
    with claude.messages.stream(model="deepseek-v4-flash", max_tokens=64, messages=long) as stream:
        start = next(iter(stream))
        final = stream.get_final_message()
        request_id = stream.response.headers["x-faregate-request-id"]
    assert start.type == "message_start"
    counted = start.message.usage.input_tokens
    row = stored_record(gateway, request_id)
    assert final.usage.input_tokens == row["prompt_tokens"]  # the upstream's own count, at the end
    assert abs(counted - row["prompt_tokens"]) <= row["prompt_tokens"] // 10  # an estimate, near it


def test_tools_round_trip(claude: anthropic.Anthropic) -> None:
    tools: Any = [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    for model in ("claude-haiku-4-5", "deepseek-v4-flash"):
        first = claude.messages.create(
            model=model,
            max_tokens=64,
            tools=tools,
            messages=[{"role": "user", "content": "weather in Paris?"}],
        )
        assert first.stop_reason == "tool_use"
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.name == "get_weather" and isinstance(call.input, dict)
        second = claude.messages.create(
            model=model,
            max_tokens=64,
            tools=tools,
            tool_choice={"type": "none"},
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": [call.model_dump()]},  # type: ignore[list-item]
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
                },
            ],
        )
        assert second.content, model


def test_a_tool_call_in_a_stream(claude: anthropic.Anthropic, client: openai.OpenAI) -> None:
    tools: Any = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    with claude.messages.stream(
        model="deepseek-v4-flash",
        max_tokens=64,
        tools=tools,
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict)
    function: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    events = list(
        client.responses.create(model="claude-haiku-4-5", input="weather?", tools=function, stream=True)
    )
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done and done[-1].item.type == "function_call" and done[-1].item.name == "get_weather"  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"


def test_an_image(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=32,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                    {"type": "text", "text": "what is in the picture?"},
                ],
            }
        ],
    )
    assert message.content[0].text == "what is in the picture?"  # type: ignore[union-attr]


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    long = claude.messages.count_tokens(
        model="claude-haiku-4-5", system=LONG, messages=[{"role": "user", "content": "hi"}]
    )
    assert 0 < short.input_tokens < long.input_tokens


def test_the_anthropic_sdk_lists_and_reads_models(claude: anthropic.Anthropic) -> None:
    """anthropic's models.list and models.retrieve read Anthropic's fields (type, display_name,
    created_at) and its page (has_more, first_id, last_id) from the same listing."""
    page = claude.models.list()
    assert page.has_more is False and page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    listed = {m.id: m for m in page.data}
    haiku = claude.models.retrieve("claude-haiku-4-5")
    assert haiku == listed["claude-haiku-4-5"]
    assert (haiku.type, haiku.display_name) == ("model", "claude-haiku-4-5")
    assert isinstance(haiku.created_at, datetime.datetime)


def test_errors_in_anthropics_shape(gateway: GatewayProcess, claude: anthropic.Anthropic) -> None:
    wrong = anthropic.Anthropic(
        api_key="fg-wrong", base_url=f"http://127.0.0.1:{gateway.port}", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as auth:
        wrong.messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "thinking" in bad.value.message
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # Outside the pipeline too (a wrong method, here): Anthropic's shape under /v1/messages.
    refused = httpx.get(f"http://127.0.0.1:{gateway.port}/v1/messages")
    assert refused.status_code == 405 and refused.json()["type"] == "error"
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}])


def test_a_model_no_enabled_provider_serves_is_not_retried_by_the_sdks(
    gateway: GatewayProcess, key: str
) -> None:
    """qwen3-8b's providers have no key here: its 503 stays until the operator sets one, so the
    SDKs, each with its default retries (2, on any 5xx unless told not to), send it once."""
    sent: list[str] = []
    hooks: dict[str, Any] = {"request": [lambda request: sent.append(request.url.path)]}
    chat = openai.OpenAI(api_key=key, base_url=gateway.base_url, http_client=httpx.Client(event_hooks=hooks))
    with pytest.raises(openai.InternalServerError) as info:
        chat.chat.completions.create(model="qwen3-8b", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503 and "no enabled provider" in info.value.message
    messages = anthropic.Anthropic(
        api_key=key,
        base_url=f"http://127.0.0.1:{gateway.port}",
        http_client=anthropic.DefaultHttpxClient(event_hooks=hooks),
    )
    with pytest.raises(anthropic.APIStatusError) as refused:
        messages.messages.create(model="qwen3-8b", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 503
    assert sent == ["/v1/chat/completions", "/v1/messages"]


def test_every_upstream_overloaded_is_anthropics_529(
    claude: anthropic.Anthropic, client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    """overloaded-claude's only offer (the simulator's Messages wire) answers 529 overloaded_error,
    retried, then nothing to fall back to: a Messages client gets 529 overloaded_error, whole or
    streamed, as from Anthropic itself; the record says 529. A chat client gets the 502 that
    lists the attempts."""
    for stream in (False, True):
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            claude.messages.create(
                model="claude-sonnet-5",
                max_tokens=8,
                messages=[{"role": "user", "content": "x"}],
                stream=stream,
            )
        assert overloaded.value.status_code == 529
        assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        row = stored_record(gateway, overloaded.value.response.headers["x-faregate-request-id"])
        assert row["status"] == 529 and row["wire"] == "messages"
        assert {attempt["status"] for attempt in json.loads(row["attempts"])} == {529}
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="overloaded-claude", messages=[{"role": "user", "content": "x"}])
    assert failed.value.status_code == 502


def test_fallback_from_a_failing_claude_to_deepseek_inside_a_stream(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    for route in ("claude-then-deepseek", "cut-claude-then-deepseek"):
        raw = claude.messages.with_raw_response.create(
            model=route, max_tokens=64, messages=[{"role": "user", "content": "fall back"}], stream=True
        )
        events = list(raw.parse())
        request_id = raw.headers["x-faregate-request-id"]
        assert raw.headers["x-faregate-provider"] == "deepseek"
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
        assert text == "fall back"
        assert [e.type for e in events][-1] == "message_stop"
        row = stored_record(gateway, request_id)
        attempts = json.loads(row["attempts"])
        assert row["status"] == 200 and row["wire"] == "messages"
        assert attempts[0]["provider"] == "anthropic" and attempts[0]["outcome"] != "ok"
        assert attempts[-1]["provider"] == "deepseek" and attempts[-1]["outcome"] == "ok"


def test_prompt_cache_tokens_are_billed_exactly(
    claude: anthropic.Anthropic, gateway: GatewayProcess, sim: SimProcess
) -> None:
    """cost == the catalog's prices (cache writes and reads their own) x the usage the simulator
    itself reports for the same request, in Decimal, in the header, the body and the record."""
    catalog = build_catalog(load_settings())
    haiku = catalog.get("claude-haiku-4-5")
    assert haiku is not None
    price = next(o.price for o in haiku.offers if o.provider == "anthropic")
    assert price == HAIKU
    asked: Any = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": [{"type": "text", "text": LONG + " Prices.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Is it sunny?"}],
    }
    costs = []
    for expected in ("write", "read"):
        raw = claude.messages.with_raw_response.create(**asked)
        usage = raw.parse().usage
        written = usage.cache_creation_input_tokens or 0
        read = usage.cache_read_input_tokens or 0
        if expected == "write":
            assert written > 300 and read == 0
        else:
            assert read > 300 and written == 0
        billed = Usage(
            usage.input_tokens + written + read,
            usage.output_tokens,
            cache_read_tokens=read,
            cache_write_tokens=written,
        )
        cost = Decimal(raw.headers["x-faregate-cost-usd"])
        assert cost == price.cost(billed)
        assert (usage.model_extra or {})["cost"] == float(cost)
        assert Decimal(stored_record(gateway, raw.headers["x-faregate-request-id"])["cost_usd"]) == cost
        costs.append(cost)
    assert costs[1] < costs[0] / 5
    # The simulator, asked the same directly, reports the usage the gateway billed (a cache read now).
    direct = httpx.post(f"http://127.0.0.1:{sim.port}/v1/messages", json=asked, headers={"x-api-key": "sk"})
    own = direct.json()["usage"]
    assert (own["input_tokens"], own["cache_read_input_tokens"], own["output_tokens"]) == (
        usage.input_tokens,
        read,
        usage.output_tokens,
    )


def test_top_k_and_cache_marks_reach_only_a_messages_upstream(claude: anthropic.Anthropic) -> None:
    """The sim's `inspect` answer is the body it received (for the Messages wire, translated to
    the chat shape): a chat-wire upstream never sees top_k or cache_control; Anthropic does."""
    seen = {}
    for model in ("inspect-chat", "inspect-claude"):
        message = claude.messages.create(
            model=model,
            max_tokens=64,
            extra_body={"top_k": 5},
            system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "look"}],
        )
        seen[model] = message.content[0].text  # type: ignore[union-attr]
    assert "top_k" not in seen["inspect-chat"] and "cache_control" not in seen["inspect-chat"]
    assert '"top_k":5' in seen["inspect-claude"] and '"cache_control"' in seen["inspect-claude"]


def test_the_cache_serves_a_messages_request_again_whole_or_streamed(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    """The cache keeps internal answers, so a hit is written in the asking client's wire: a whole
    message or a replayed Messages stream, free. The replay's message_start has the stored input
    count (it said 0, though the stored usage knew it)."""
    # temperature 0 makes it cacheable (this SDK version sends it only as an extra field).
    asked: Any = {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "cache me"}],
        "extra_body": {"temperature": 0},
    }
    with cache_written(gateway):
        first = claude.messages.with_raw_response.create(model="claude-haiku-4-5", **asked)
    assert first.headers["x-faregate-cache"] == "miss"
    again = claude.messages.with_raw_response.create(model="claude-haiku-4-5", **asked)
    assert again.headers["x-faregate-cache"] == "hit" and again.headers["x-faregate-cost-usd"] == "0"
    message = again.parse()
    assert message.content[0].text == "cache me"  # type: ignore[union-attr]
    assert (message.usage.model_extra or {})["cost"] == 0
    streamed = claude.messages.with_raw_response.create(model="claude-haiku-4-5", stream=True, **asked)
    assert streamed.headers["x-faregate-cache"] == "hit"
    events = list(streamed.parse())
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "cache me"  # type: ignore[union-attr]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.usage.input_tokens == message.usage.input_tokens > 0
    assert delta.usage.input_tokens == message.usage.input_tokens


@pytest.fixture(scope="module")
def metered(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "DEEPSEEK_API_KEY": "sk-deepseek-test"}
    extra = config(sim) + "accounts: {enabled: true}\n"
    with run_gateway(tmp_path_factory.mktemp("wires-metered"), None, extra, env=env) as process:
        yield process


def funded_key(gateway: GatewayProcess, credits: str) -> tuple[str, str]:
    made = httpx.post(
        f"http://127.0.0.1:{gateway.port}/admin/keys",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"name": "wires", "credits_usd": credits},
    )
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["api_key"]


def test_a_messages_request_is_reserved_at_the_dearest_input_price_and_settled_exactly(
    metered: GatewayProcess,
) -> None:
    key_id, key = funded_key(metered, "1")
    claude = anthropic.Anthropic(api_key=key, base_url=f"http://127.0.0.1:{metered.port}", max_retries=0)
    system: Any = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        system=system,
        messages=[{"role": "user", "content": "Sunny?"}],
    )
    usage = raw.parse().usage
    assert (usage.cache_creation_input_tokens or 0) > 300
    cost = Decimal(raw.headers["x-faregate-cost-usd"])
    with sqlite3.connect(metered.store_path / "faregate.db") as db:
        rows = db.execute(
            "SELECT kind, amount_nano, cost_nano FROM ledger WHERE key_id = ? ORDER BY id", (key_id,)
        ).fetchall()
    held = -next(amount for kind, amount, _ in rows if kind == "reservation")
    settled = next(spent for kind, _, spent in rows if kind == "settlement")
    assert Decimal(settled).scaleb(-9) == cost
    # The hold priced every prompt token at the one-hour cache write ($2 per 1M), not input ($1).
    prompt = (
        usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    )
    assert Decimal(held).scaleb(-9) >= (Decimal(prompt) * 2 + Decimal(50) * 5) / Decimal(1_000_000) > cost


def test_a_key_without_credit_gets_anthropics_billing_error(metered: GatewayProcess) -> None:
    _, key = funded_key(metered, "0.000001")
    claude = anthropic.Anthropic(api_key=key, base_url=f"http://127.0.0.1:{metered.port}", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=4000, messages=[{"role": "user", "content": "expensive"}]
        )
    assert info.value.status_code == 402
    assert info.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


# -- the Responses API ----------------------------------------------------------------------------


def test_responses_create(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.responses.with_raw_response.create(
        model="deepseek-v4-flash", instructions="Be brief.", input="hello responses"
    )
    response = raw.parse()
    assert response.output_text == "hello responses"
    assert response.status == "completed" and response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens > 0
    cost = Decimal(raw.headers["x-faregate-cost-usd"])
    assert (response.usage.model_extra or {})["cost"] == float(cost) > 0
    row = stored_record(gateway, raw.headers["x-faregate-request-id"])
    assert row["wire"] == "responses" and Decimal(row["cost_usd"]) == cost
    baseline = Decimal(raw.headers["x-faregate-baseline-cost-usd"])
    assert baseline == Decimal(row["baseline_cost_usd"]) > cost
    assert (response.usage.model_extra or {})["baseline_cost"] == float(baseline)


def test_responses_input_tokens_count(client: openai.OpenAI) -> None:
    """openai's responses.input_tokens.count, as count_tokens for Messages: the gateway's count of
    the translated request, for a model or route it knows; no model is called."""
    short = client.responses.input_tokens.count(model="claude-haiku-4-5", input="hi")
    long = client.responses.input_tokens.count(
        model="claude-then-deepseek",
        instructions=LONG,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    )
    assert short.object == "response.input_tokens" and 0 < short.input_tokens < long.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.input_tokens.count(model="claude-haiku-4-5", input="hi", previous_response_id="r")


def test_responses_text_verbosity_is_served_by_claude_too(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="claude-haiku-4-5", input="brief please", text={"verbosity": "low"}
    )
    assert response.status == "completed" and response.output_text == "brief please"


class City(pydantic.BaseModel):
    name: str
    population: int


def test_structured_output_parsed_through_every_wire(
    client: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    """The SDKs' parse helpers through the gateway: a json_schema response_format reaches a chat
    upstream as is and Claude as output_config.format (the Responses API's text.format, the
    Messages API's output_config.format, each translated); the JSON that comes back parses."""
    for model in ("deepseek-v4-flash", "claude-haiku-4-5"):
        chat = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "Paris"}], response_format=City
        )
        assert chat.choices[0].message.parsed == City(name="Paris", population=0)
        with client.chat.completions.stream(
            model=model, messages=[{"role": "user", "content": "Rome"}], response_format=City
        ) as stream:
            assert stream.get_final_completion().choices[0].message.parsed == City(name="Rome", population=0)
        response = client.responses.parse(model=model, input="Oslo", text_format=City)
        assert response.output_parsed == City(name="Oslo", population=0)
        message = claude.messages.parse(
            model=model, max_tokens=200, messages=[{"role": "user", "content": "Lima"}], output_format=City
        )
        assert message.parsed_output == City(name="Lima", population=0)


def test_responses_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="claude-haiku-4-5", input="stream responses", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "stream responses"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "stream responses" and final.usage is not None


def test_responses_function_calls(client: openai.OpenAI) -> None:
    tools: Any = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    ]
    response = client.responses.create(model="deepseek-v4-flash", input="weather?", tools=tools)
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather"
    again = client.responses.create(
        model="deepseek-v4-flash",
        tools=tools,
        tool_choice="none",
        input=[
            {"role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert again.status == "completed"


def test_stored_responses_are_refused_clearly(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as stateful:
        client.responses.create(model="deepseek-v4-flash", input="again", previous_response_id="resp_1")
    assert "previous_response_id" in stateful.value.message
    with pytest.raises(openai.NotFoundError) as stored:
        client.responses.retrieve("resp_1")
    assert "not supported" in stored.value.message
