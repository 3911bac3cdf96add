"""The simulator's other wires in process: Messages (faults in Anthropic's shapes, the prompt
cache's exact usage, cut streams, empty answers), Responses and embeddings, through the
official SDKs' async clients."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import numpy as np
import openai
import pytest

from faregate import tokens
from faregate.sim.script import parse_script
from faregate.sim.server import RunningSim, start
from faregate.wire.anthropic import messages_to_chat

LONG = "You are a careful assistant who answers in one line. " * 40
CACHED_SYSTEM = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]


@pytest.fixture
async def local_sim() -> AsyncIterator[RunningSim]:
    running = await start(parse_script({"seed": 1, "defaults": {"tokens_per_s": 0}}), catalog_names=[])
    yield running
    await running.close()


@pytest.fixture
async def claude(local_sim: RunningSim) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=local_sim.url, max_retries=0) as client:
        yield client


@pytest.fixture
async def gpt(local_sim: RunningSim) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="k", base_url=local_sim.base_url, max_retries=0) as client:
        yield client


def prompt_tokens(body: dict[str, Any]) -> int:
    return tokens.count_input(messages_to_chat(body))


async def test_messages_usage_counts_cache_writes_then_reads(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 50,
        "system": CACHED_SYSTEM,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    total = prompt_tokens(body)
    first = await claude.messages.create(**body)
    assert [b.text for b in first.content if b.type == "text"] == ["hello there"]
    usage = first.usage
    assert usage.cache_read_input_tokens == 0
    assert usage.cache_creation_input_tokens and usage.cache_creation_input_tokens > 300
    assert usage.input_tokens + usage.cache_creation_input_tokens == total
    assert usage.output_tokens == tokens.count_text("hello there")
    second = (await claude.messages.create(**body)).usage
    assert (second.cache_read_input_tokens, second.cache_creation_input_tokens) == (
        usage.cache_creation_input_tokens,
        0,
    )
    assert second.input_tokens == usage.input_tokens
    one_hour = {**body, "system": [{**CACHED_SYSTEM[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    third = (await claude.messages.create(**one_hour)).usage
    assert third.cache_creation is not None
    assert third.cache_creation.ephemeral_1h_input_tokens == third.cache_creation_input_tokens > 0
    plain = (await claude.messages.create(**{**body, "system": LONG})).usage
    assert (plain.cache_read_input_tokens, plain.cache_creation_input_tokens, plain.input_tokens) == (
        0,
        0,
        total,
    )


async def test_messages_stream_usage_matches_the_whole_answer(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    body: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "system": CACHED_SYSTEM,
        "messages": [{"role": "user", "content": "stream me please"}],
    }
    async with claude.messages.stream(**body) as stream:
        text = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(text) == "stream me please"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens + (final.usage.cache_creation_input_tokens or 0) == prompt_tokens(body)


async def test_messages_tool_use(claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI) -> None:
    tool = {"name": "lookup", "description": "d", "input_schema": {"type": "object", "properties": {}}}
    message = await claude.messages.create(
        model="m",
        max_tokens=50,
        tools=[tool],
        messages=[{"role": "user", "content": "use it"}],
        extra_body={"sim": {"tool_call": True}},
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        ("tool_use", "lookup", {})
    ]


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ("rate_limit", anthropic.RateLimitError, 429),
        ("server_error", anthropic.InternalServerError, 500),
        ("unavailable", anthropic.InternalServerError, 529),
    ],
)
async def test_messages_faults_in_anthropics_shapes(
    claude: anthropic.AsyncAnthropic,
    gpt: openai.AsyncOpenAI,
    fault: str,
    error: type[anthropic.APIStatusError],
    status: int,
) -> None:
    with pytest.raises(error) as info:
        await claude.messages.create(
            model="m",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-sim-fault": fault},
        )
    assert info.value.status_code == status
    expected = {
        "rate_limit": "rate_limit_error",
        "server_error": "api_error",
        "unavailable": "overloaded_error",
    }[fault]
    assert info.value.body["error"]["type"] == expected  # type: ignore[index]


async def test_messages_empty_and_cut_answers(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    empty = await claude.messages.create(
        model="m",
        max_tokens=5,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-sim-fault": "empty_choices"},
    )
    assert (empty.content, empty.stop_reason, empty.usage.output_tokens) == ([], "end_turn", 0)
    # A cut stream: some content, then the body ends (the SDK sees no error, only no message_stop).
    stream = await claude.messages.create(
        model="m",
        max_tokens=50,
        stream=True,
        messages=[{"role": "user", "content": "one two three four five six"}],
        extra_headers={"x-sim-fault": "truncate"},
    )
    events = [event.type async for event in stream]
    assert "content_block_delta" in events
    assert "message_stop" not in events and "message_delta" not in events


async def test_messages_and_responses_streams_stall(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    # The `stall` fault on the translated wires: some content, a pause, then the whole rest.
    stall = {"sim": {"fault": "stall", "after_tokens": 1, "hang_s": 0.3}}
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await claude.messages.create(
        model="m",
        max_tokens=50,
        stream=True,
        messages=[{"role": "user", "content": "one two three four five six"}],
        extra_body=stall,
    )
    events = [event.type async for event in stream]
    assert "content_block_delta" in events and events[-1] == "message_stop"
    assert loop.time() - started >= 0.3
    started = loop.time()
    responses = await gpt.responses.create(
        model="m", input="one two three four five six", stream=True, extra_body=stall
    )
    kinds = [event.type async for event in responses]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert loop.time() - started >= 0.3


async def test_messages_refuses_what_the_wire_cannot_say(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        await claude.messages.create(
            model="m",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "hi"}],
        )


async def test_count_tokens(claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    counted = await claude.messages.count_tokens(**body)
    assert counted.input_tokens == tokens.count_input(messages_to_chat(body, count_only=True))


async def test_responses_whole_and_streamed(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    response = await gpt.responses.create(model="gpt-4o", input="hi there", instructions="be nice")
    assert response.output_text == "hi there"
    assert response.usage is not None
    expected = tokens.count_input(
        {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi there"}]}
    )
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        expected,
        tokens.count_text("hi there"),
    )
    async with gpt.responses.stream(model="gpt-4o", input="stream it now") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "stream it now"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        await gpt.responses.create(model="gpt-4o", input="hi", previous_response_id="resp_1")
    with pytest.raises(openai.RateLimitError):
        await gpt.responses.create(model="gpt-4o", input="hi", extra_headers={"x-sim-fault": "rate_limit"})


async def test_embeddings_are_deterministic_unit_vectors(
    claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    client = gpt
    first = await client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog"])
    again = await client.embeddings.create(
        model="text-embedding-3-small", input="a cat", encoding_format="float"
    )
    assert len(first.data) == 2 and len(first.data[0].embedding) == 1536
    assert np.allclose(first.data[0].embedding, again.data[0].embedding)
    assert not np.allclose(first.data[0].embedding, first.data[1].embedding)
    assert abs(np.linalg.norm(first.data[0].embedding) - 1) < 1e-5
    assert first.usage.prompt_tokens == tokens.count_text("a cat") + tokens.count_text("a dog")
    # Counted as a provider counts them, by o200k, as the chat endpoint does (not by the gateway's
    # own estimate: the light count makes these 12).
    texts = ["The food was delicious.", "The waiter was kind."]
    counted = await client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert counted.usage.prompt_tokens == sum(tokens.count_text(t) for t in texts) == 10
    small = await client.embeddings.create(
        model="e", input=[[1, 2, 3]], dimensions=8, encoding_format="base64"
    )
    raw = small.data[0].embedding
    assert isinstance(raw, str) and len(np.frombuffer(base64.b64decode(raw), "<f4")) == 8
    assert small.usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="e", input="")
