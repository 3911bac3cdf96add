"""The simulator's other wires as a real process, driven by the official SDKs as a user would:
`anthropic` (sync, async, streaming, tools, images, count_tokens, prompt-cache usage, 529) and
`openai` (responses.create streaming and not, embeddings.create)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from faregate import tokens
from faregate.wire.anthropic import messages_to_chat
from harness import SimProcess, run_sim

pytestmark = pytest.mark.e2e

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
LONG = "Answer every question in one short line, politely and exactly. " * 40


@pytest.fixture(scope="module")
def wire_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    with run_sim(
        tmp_path_factory.mktemp("wire-sim"), "defaults: {ttft_ms: 5, tokens_per_s: 500}\n"
    ) as process:
        yield process


def root(sim: SimProcess) -> str:
    return f"http://127.0.0.1:{sim.port}"


def test_anthropic_sdk_sync_with_images_and_cache(wire_sim: SimProcess) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=root(wire_sim), max_retries=0)
    body: dict[str, Any] = {
        "model": "claude-opus-4-6",
        "max_tokens": 100,
        "system": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "text", "text": "What is in the picture?"},
                ],
            }
        ],
    }
    prompt = tokens.count_input(messages_to_chat(body))
    first = client.messages.create(**body)
    assert first.content[0].type == "text" and first.content[0].text == "What is in the picture?"
    assert first.stop_reason == "end_turn"
    written = first.usage.cache_creation_input_tokens or 0
    assert written > 0 and first.usage.input_tokens + written == prompt
    second = client.messages.create(**body)
    assert (second.usage.cache_read_input_tokens, second.usage.cache_creation_input_tokens) == (written, 0)
    counted = client.messages.count_tokens(
        model=body["model"], system=body["system"], messages=body["messages"]
    )
    assert counted.input_tokens == prompt


async def test_anthropic_sdk_async_stream_with_tools(wire_sim: SimProcess) -> None:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=root(wire_sim), max_retries=0) as client:
        await stream_with_tools(client)


async def stream_with_tools(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "count to five slowly"}],
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == "count to five slowly"
    assert final.usage.output_tokens == tokens.count_text("count to five slowly")
    tool = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {}},
    }
    async with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "weather?"}],
        extra_body={"sim": {"tool_call": True}},
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name) for b in final.content if b.type == "tool_use"] == [("tool_use", "get_weather")]


def test_anthropic_sdk_sees_529_as_overloaded(wire_sim: SimProcess) -> None:
    client = anthropic.Anthropic(api_key="k", base_url=root(wire_sim), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model="m",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"sim": {"fault": "unavailable"}},
        )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_openai_sdk_responses(wire_sim: SimProcess) -> None:
    client = openai.OpenAI(api_key="k", base_url=f"{root(wire_sim)}/v1", max_retries=0)
    response = client.responses.create(
        model="gpt-4o", input="Say hi", instructions="Be brief.", max_output_tokens=50
    )
    assert (response.status, response.output_text) == ("completed", "Say hi")
    stream = client.responses.create(model="gpt-4o", input="stream this answer", stream=True)
    kinds = []
    text = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(text) == "stream this answer"


def test_openai_sdk_embeddings(wire_sim: SimProcess) -> None:
    client = openai.OpenAI(api_key="k", base_url=f"{root(wire_sim)}/v1", max_retries=0)
    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])
    assert [len(d.embedding) for d in result.data] == [1536, 1536]
    assert result.usage.prompt_tokens == tokens.count_text("one") + tokens.count_text("two words")
    again = client.embeddings.create(model="text-embedding-3-small", input="one")
    assert again.data[0].embedding == result.data[0].embedding
