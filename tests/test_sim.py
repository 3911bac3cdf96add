"""The provider simulator as a real server on a loopback port, checked with the openai SDK and raw aiohttp."""

from __future__ import annotations

import asyncio
import csv
import datetime
import itertools
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import anthropic
import jsonschema
import openai
import orjson
import pydantic
import pytest
import typer
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from faregate import tokens
from faregate.errors import ConfigError
from faregate.sim import RunningSim, answers, catalog_model_names, create_app, parse_script, start
from faregate.sim.script import load_script
from faregate.sim.server import catalog_efforts, catalog_refusals
from faregate.wire.model_params import refused_params

GSM8K = Path(__file__).resolve().parents[1] / "data" / "routellm" / "gsm8k_responses.csv"
MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the simulator."}]
StartSim = Callable[..., Awaitable[RunningSim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start a simulator with a script given as a dict; every one started is closed after the test."""
    running: list[RunningSim] = []

    async def starter(
        script: dict[str, Any] | None = None, catalog_names: list[str] | None = None
    ) -> RunningSim:
        sim = await start(parse_script(script or {}), catalog_names=catalog_names or [])
        running.append(sim)
        return sim

    yield starter
    for sim in running:
        await sim.close()


def sdk(sim: RunningSim, **kwargs: Any) -> Any:
    """The official client, typed loosely: the tests pass plain dicts the SDK's TypedDicts would refuse."""
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0, **kwargs)


async def post(sim: RunningSim, body: dict[str, Any] | bytes, **headers: str) -> tuple[int, Any, bytes]:
    """POST a chat completion with raw aiohttp: (status, headers, body bytes)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.base_url}/chat/completions", data=data, headers=headers) as response:
            return response.status, response.headers, await response.read()


def sse_events(raw: bytes) -> list[Any]:
    """Every `data:` event of an SSE body, JSON-decoded, with "[DONE]" kept as the string."""
    assert raw.endswith(b"\n\n") or not raw
    events: list[Any] = []
    for frame in raw.split(b"\n\n"):
        if not frame:
            continue
        assert frame.startswith(b"data: "), frame
        payload = frame[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return events


def chat(model: str = "m", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSG, **fields}


def test_lorem_words_are_one_token_each() -> None:
    enc = tokens.encoding()
    assert len(enc.encode_ordinary(answers.LOREM_FIRST)) == 1
    for word in answers.LOREM_WORDS:
        assert len(enc.encode_ordinary(" " + word)) == 1, word
    for n in (0, 1, 2, 51, 52, 300):
        reply = answers.lorem_reply(n, None)
        assert reply.tokens == n == tokens.count_text(reply.content) == len(reply.pieces or ())


def test_tokenizer_keeps_no_python_copy_of_its_ranks() -> None:
    """The Rust encoder holds the vocabulary; tiktoken's Python dict of it (~28 MiB, kept only to
    pickle) is dropped once the encoder is built, and counting and decoding still work."""
    enc = tokens.encoding()
    assert not enc._mergeable_ranks
    assert enc.n_vocab == 199_998
    text = "Hello there, friend. ¿Qué tal? 🙂"
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert tokens.count_text("hello world") == 2


async def test_non_stream_matches_openai_shape_and_usage(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"answer": {"fixed": "Hello there, friend. ¿Qué tal? 🙂"}}})
    reply = await sdk(sim).chat.completions.create(model="any-model", messages=MSG)
    assert (
        reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == "any-model"
    )
    choice = reply.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.logprobs is None
    assert (
        choice.message.role == "assistant" and choice.message.content == "Hello there, friend. ¿Qué tal? 🙂"
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens.count_messages(MSG)
    assert reply.usage.completion_tokens == tokens.count_text(choice.message.content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    status, headers, raw = await post(sim, chat("any-model"), Authorization="Bearer whatever")
    body = orjson.loads(raw)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": choice.message.content,
        "refusal": None,
    }
    assert isinstance(body["created"], int) and body["system_fingerprint"]


async def test_stream_framing_without_usage(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"answer": "echo"}})
    status, headers, raw = await post(sim, chat(stream=True))
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(content) == "Say hello to the simulator." and len(content) == tokens.count_text(
        "".join(content)
    )
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


async def test_stream_include_usage(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"answer": {"lorem": 30}}})
    _, _, raw = await post(sim, chat(stream=True, stream_options={"include_usage": True}))
    events = sse_events(raw)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": tokens.count_messages(MSG),
        "completion_tokens": 30,
        "total_tokens": tokens.count_messages(MSG) + 30,
    }

    stream = await sdk(sim).chat.completions.create(
        model="m", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 30 == tokens.count_text(text)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_finish_reason_length(start_sim: StartSim, field: str) -> None:
    sim = await start_sim({"models": {"lorem": {"answer": {"lorem": 50}}}})
    client = sdk(sim)
    cut = await client.chat.completions.create(model="lorem", messages=MSG, **{field: 7})
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 7
    assert tokens.count_text(cut.choices[0].message.content) == 7

    long_prompt = [{"role": "user", "content": "naïve café ünïcödé — " * 20}]
    echo = await client.chat.completions.create(model="m", messages=long_prompt, **{field: 9})
    assert echo.choices[0].finish_reason == "length"
    assert echo.usage.completion_tokens == tokens.count_text(echo.choices[0].message.content) <= 9
    assert long_prompt[0]["content"].startswith(echo.choices[0].message.content)

    roomy = await client.chat.completions.create(model="lorem", messages=MSG, **{field: 500})
    assert roomy.choices[0].finish_reason == "stop" and roomy.usage.completion_tokens == 50

    _, _, raw = await post(
        sim, chat("lorem", stream=True, stream_options={"include_usage": True}, **{field: 5})
    )
    *chunks, usage_chunk, _ = sse_events(raw)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) == 1 + 5 + 1 and usage_chunk["usage"]["completion_tokens"] == 5


async def test_rate_limit_server_error_unavailable(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"retry_after_s": 7}})
    status, headers, raw = await post(sim, chat(), **{"x-sim-fault": "rate_limit"})
    assert status == 429 and headers["Retry-After"] == "7" and headers["retry-after-ms"] == "7000"
    error = orjson.loads(raw)["error"]
    assert error["code"] == "rate_limit_exceeded" and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.RateLimitError):
        await sdk(sim).chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-sim-fault": "rate_limit"}
        )
    for fault, code in (("server_error", 500), ("unavailable", 503)):
        status, _, raw = await post(sim, chat(), **{"x-sim-fault": fault})
        assert status == code and orjson.loads(raw)["error"]["type"] == "server_error"


async def test_hang_sends_nothing_until_hang_s(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"hang_s": 30}})
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            await session.post(
                f"{sim.base_url}/chat/completions", json=chat(), headers={"x-sim-fault": "hang"}
            )
    # A short hang is a slow answer: the request then completes normally.
    started = time.monotonic()
    status, _, _ = await post(sim, chat(sim={"fault": "hang", "hang_s": 0.2}))
    assert status == 200 and time.monotonic() - started >= 0.2


async def test_reset_drops_the_connection(start_sim: StartSim) -> None:
    sim = await start_sim()
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(sim, chat(), **{"x-sim-fault": "reset"})
    with pytest.raises(openai.APIConnectionError):
        await sdk(sim).chat.completions.create(
            model="m", messages=MSG, extra_body={"sim": {"fault": "reset"}}
        )
    assert (await post(sim, chat()))[0] == 200  # the server itself is fine


async def test_empty_choices_and_blank(start_sim: StartSim) -> None:
    sim = await start_sim()
    status, _, raw = await post(sim, chat(), **{"x-sim-fault": "empty_choices"})
    assert status == 200 and orjson.loads(raw)["choices"] == []
    _, _, raw = await post(sim, chat(stream=True), **{"x-sim-fault": "empty_choices"})
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and all(e["choices"] == [] for e in events[:-1])

    blank = await sdk(sim).chat.completions.create(
        model="m", messages=MSG, extra_headers={"x-sim-fault": "blank"}
    )
    content = blank.choices[0].message.content
    assert (
        content is not None and content and not content.strip() and blank.choices[0].finish_reason == "stop"
    )
    assert blank.usage is not None and blank.usage.completion_tokens == tokens.count_text(content)
    _, _, raw = await post(sim, chat(stream=True), **{"x-sim-fault": "blank"})
    *chunks, done = sse_events(raw)
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert done == "[DONE]" and deltas and all(d is not None and not d.strip() for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_truncate(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"answer": {"lorem": 40}}})
    _, _, raw = await post(
        sim, chat(stream=True, stream_options={"include_usage": True}), **{"x-sim-fault": "truncate"}
    )
    events = sse_events(raw)
    assert "[DONE]" not in events and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    assert len(events) - 1 == 20  # half the answer by default
    _, _, raw = await post(sim, chat(stream=True, sim={"fault": "truncate", "after_tokens": 3}))
    assert len(sse_events(raw)) == 1 + 3
    _, _, raw = await post(sim, chat(stream=True, sim={"fault": "truncate", "after_tokens": 0}))
    assert len(sse_events(raw)) == 1

    with pytest.raises(aiohttp.ClientPayloadError):
        await post(sim, chat(), **{"x-sim-fault": "truncate"})
    with pytest.raises(openai.APIConnectionError):
        await sdk(sim).chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-sim-fault": "truncate"}
        )


async def test_stall(start_sim: StartSim) -> None:
    # The head and `after_tokens` content tokens, then nothing for hang_s, then the rest.
    sim = await start_sim({"defaults": {"answer": {"lorem": 10}, "tokens_per_s": 0}})
    body = chat(stream=True, sim={"fault": "stall", "after_tokens": 3, "hang_s": 0.4})
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, bytes]] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.base_url}/chat/completions", data=orjson.dumps(body)) as response:
            started = loop.time()
            async for data in response.content.iter_any():
                arrivals.append((loop.time() - started, data))
    # The stall is the longest pause between arrivals; what came before it is the role and 3
    # tokens. Its length is only checked against half of hang_s: the machine is shared, and a
    # late delivery of the last token before it shortens the pause the client sees.
    pauses = [later[0] - earlier[0] for earlier, later in itertools.pairwise(arrivals)]
    stall = max(range(len(pauses)), key=pauses.__getitem__)
    before = b"".join(data for _, data in arrivals[: stall + 1])
    assert len(sse_events(before)) == 1 + 3  # the role, then 3 tokens
    assert pauses[stall] >= 0.2
    events = sse_events(b"".join(data for _, data in arrivals))
    assert events[-1] == "[DONE]" and len(events) == 1 + 10 + 1 + 1  # ... the finish and [DONE]
    # Not streamed, it is a hang: the whole answer after hang_s.
    started = loop.time()
    status, _, raw = await post(sim, chat(sim={"fault": "stall", "hang_s": 0.2}))
    assert status == 200 and orjson.loads(raw)["choices"] and loop.time() - started >= 0.1


async def test_seeded_rates_match_and_repeat(start_sim: StartSim) -> None:
    rates = {"rate_limit": 0.2, "server_error": 0.1, "empty_choices": 0.1}
    sim = await start_sim({"seed": 11, "defaults": {"faults": rates, "retry_after_s": 0}})
    statuses: list[list[int]] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            run = []
            for _ in range(400):
                async with session.post(f"{sim.base_url}/chat/completions", json=chat()) as response:
                    await response.read()
                    run.append(response.status)
            statuses.append(run)
            async with session.get(f"{sim.url}/sim/stats") as response:
                stats = await response.json()
            async with session.post(f"{sim.url}/sim/reset") as response:
                assert response.status == 200
    assert statuses[0] == statuses[1]  # a reset restarts the seeded draws
    assert stats["requests"] == 400 and stats["models"] == {"m": 400}
    for fault, rate in rates.items():
        assert abs(stats["faults"][fault] / 400 - rate) < 0.06, (fault, stats["faults"])
    assert stats["faults"]["rate_limit"] == statuses[1].count(429)
    assert stats["by_model"]["m"]["faults"] == stats["faults"]


async def test_forcing_by_header_and_body(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"faults": {"server_error": 1.0}}})
    assert (await post(sim, chat()))[0] == 500
    assert (await post(sim, chat(), **{"x-sim-fault": "none"}))[0] == 200
    assert (await post(sim, chat(sim={"fault": "none"})))[0] == 200
    assert (await post(sim, chat(sim={"fault": "unavailable"})))[0] == 503
    # The body wins over the header.
    assert (await post(sim, chat(sim={"fault": "none"}), **{"x-sim-fault": "rate_limit"}))[0] == 200

    reply = await sdk(sim).chat.completions.create(
        model="m", messages=MSG, extra_body={"sim": {"fault": "none", "answer": {"fixed": "forced"}}}
    )
    assert reply.choices[0].message.content == "forced"
    status, _, raw = await post(sim, chat(), **{"x-sim-fault": "explode"})
    assert status == 400 and "explode" in orjson.loads(raw)["error"]["message"]
    status, _, raw = await post(sim, chat(sim={"fault": "none", "colour": "red"}))
    assert status == 400 and "colour" in orjson.loads(raw)["error"]["message"]


async def test_latency_is_scripted(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"ttft_ms": 150, "tokens_per_s": 100, "answer": {"lorem": 11}}})
    started = time.monotonic()
    assert (await post(sim, chat()))[0] == 200
    assert time.monotonic() - started >= 0.15 + 0.1 - 0.01  # first token, then 10 more at 100/s
    started = time.monotonic()
    stream = await sdk(sim).chat.completions.create(model="m", messages=MSG, stream=True)
    arrivals = [time.monotonic() - started async for _ in stream]
    assert arrivals[0] >= 0.14 and arrivals[-1] >= 0.24
    instant = await start_sim({"defaults": {"tokens_per_s": 0}})
    assert (await post(instant, chat(stream=True)))[0] == 200


async def test_inspect_returns_the_body_received(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"answer": "inspect"}})
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        }
    ]
    reply = await sdk(sim).chat.completions.create(
        model="m",
        messages=messages,
        tools=tools,
        response_format={"type": "json_object"},
        extra_body={"top_k": 5},
    )
    seen = orjson.loads(reply.choices[0].message.content or "")
    assert seen["tools"] == tools and seen["response_format"] == {"type": "json_object"}
    assert seen["messages"] == messages and seen["top_k"] == 5


class Forecast(pydantic.BaseModel):
    """A structured-output type as users write one: nested, an enum, a union, a formatted string."""

    class Place(pydantic.BaseModel):
        city: str
        id: uuid.UUID

    place: Place
    days: list[datetime.date]
    high_c: int
    unit: Literal["celsius", "fahrenheit"]
    note: str | None


async def test_an_echo_answers_structured_output_with_json_its_schema_accepts(start_sim: StartSim) -> None:
    """The SDKs' parse helpers send response_format json_schema (the Responses API text.format,
    Messages output_config.format): the echo answer is then an instance of the schema, strings the
    prompt, as a model with structured outputs answers, so the parsed object comes back, on
    every wire and streamed too; usage counts the JSON sent."""
    sim = await start_sim()
    client = sdk(sim)
    whole = await client.chat.completions.parse(model="m", messages=MSG, response_format=Forecast)
    parsed = whole.choices[0].message.parsed
    assert parsed is not None and parsed.place.city == "Say hello to the simulator."
    assert parsed.unit == "celsius" and parsed.days == []
    assert whole.usage is not None
    assert whole.usage.completion_tokens == tokens.count_text(whole.choices[0].message.content or "")
    async with client.chat.completions.stream(model="m", messages=MSG, response_format=Forecast) as stream:
        streamed = await stream.get_final_completion()
    assert streamed.choices[0].message.parsed == parsed
    response = await client.responses.parse(model="m", input="Say hello.", text_format=Forecast)
    assert response.output_parsed is not None and response.output_parsed.place.city == "Say hello."
    async with anthropic.AsyncAnthropic(api_key="k", base_url=sim.url, max_retries=0) as claude:
        message = await claude.messages.parse(
            model="m", max_tokens=1000, messages=[{"role": "user", "content": "Hi."}], output_format=Forecast
        )
    assert message.parsed_output is not None and message.parsed_output.place.city == "Hi."
    json_object = await client.chat.completions.create(
        model="m", messages=MSG, response_format={"type": "json_object"}
    )
    assert orjson.loads(json_object.choices[0].message.content or "") == {"answer": MSG[-1]["content"]}
    plain = await client.chat.completions.create(model="m", messages=MSG, response_format={"type": "text"})
    assert plain.choices[0].message.content == "Say hello to the simulator."


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 3}}},
        {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5, "maximum": 1}}},
        {"type": "array", "items": {"type": "string", "minLength": 40}, "minItems": 2},
        {"type": ["string", "null"], "maxLength": 3},
        {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}},
        {"anyOf": [{"$ref": "#/$defs/Leaf"}, {"type": "null"}], "$defs": {"Leaf": {"const": 1}}},
        # Recursive: a tree whose children are trees.
        {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}},
        {"type": "object", "properties": {"flag": {"type": "boolean"}, "none": {"type": "null"}}},
    ],
)
def test_a_structured_echo_is_valid_for_its_schema(schema: dict[str, Any]) -> None:
    body = {"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    jsonschema.validate(orjson.loads(answers.answer_text("echo", body)), schema)


async def test_a_tool_call_has_arguments_its_parameters_accept(start_sim: StartSim) -> None:
    """A strict function tool (openai.pydantic_function_tool, as parse takes it) is called with
    arguments its parameters schema accepts, so the SDK's parsed_arguments comes back; usage counts
    them. A tool without properties still gets {}."""
    sim = await start_sim({"defaults": {"tool_call": True}})
    client = sdk(sim)
    reply = await client.chat.completions.parse(
        model="m", messages=MSG, tools=[openai.pydantic_function_tool(Forecast)]
    )
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "Forecast" and isinstance(call.function.parsed_arguments, Forecast)
    assert call.function.parsed_arguments.place.city == "Say hello to the simulator."
    assert reply.usage is not None
    assert reply.usage.completion_tokens == tokens.count_text("Forecast") + tokens.count_text(
        call.function.arguments
    )
    bare = [{"type": "function", "function": {"name": "now"}}]
    bare_call = (await client.chat.completions.create(model="m", messages=MSG, tools=bare)).choices[0]
    assert (bare_call.message.tool_calls or [])[0].function.arguments == "{}"
    async with client.chat.completions.stream(
        model="m", messages=MSG, tools=[openai.pydantic_function_tool(Forecast)]
    ) as stream:
        streamed = await stream.get_final_completion()
    assert (streamed.choices[0].message.tool_calls or [])[0].function.parsed_arguments == (
        call.function.parsed_arguments
    )


async def test_tool_call_non_stream_and_stream(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"tool_call": True}})
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
    ]
    client = sdk(sim)
    reply = await client.chat.completions.create(model="m", messages=MSG, tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = (choice.message.tool_calls or [])[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and call.function.arguments == "{}"

    stream = await client.chat.completions.create(model="m", messages=MSG, tools=tools, stream=True)
    name, arguments, finish, ids = "", "", None, set()
    async for chunk in stream:
        choice_chunk = chunk.choices[0]
        for delta in choice_chunk.delta.tool_calls or []:
            assert delta.index == 0
            ids.add(delta.id) if delta.id else None
            if delta.function is not None:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
        finish = choice_chunk.finish_reason or finish
    assert (name, arguments, finish, len(ids)) == ("get_weather", "{}", "tool_calls", 1)

    plain = await client.chat.completions.create(model="m", messages=MSG)
    assert plain.choices[0].message.content == "Say hello to the simulator."  # no tools: a normal answer


def first_gsm8k_row() -> dict[str, str]:
    with GSM8K.open(encoding="utf-8", newline="") as handle:
        return next(csv.DictReader(handle))


async def test_replay_from_the_gsm8k_csv(start_sim: StartSim) -> None:
    row = first_gsm8k_row()
    replay = {"csv": str(GSM8K), "column": "gpt-4-1106-preview_response"}
    sim = await start_sim(
        {
            "models": {
                "gpt-4": {"answer": {"replay": replay}},
                "mixtral": {
                    "answer": {
                        "replay": {
                            **replay,
                            "column": "mistralai/Mixtral-8x7B-Instruct-v0.1_response",
                            "fallback": "no idea",
                        }
                    }
                },
            }
        }
    )
    client = sdk(sim)
    prompt = [{"role": "user", "content": f"  {row['prompt']}\n"}]
    reply = await client.chat.completions.create(model="gpt-4", messages=prompt)
    assert reply.choices[0].message.content == row["gpt-4-1106-preview_response"]
    assert reply.usage is not None
    assert reply.usage.completion_tokens == tokens.count_text(row["gpt-4-1106-preview_response"])
    reply = await client.chat.completions.create(model="mixtral", messages=prompt)
    assert reply.choices[0].message.content == row["mistralai/Mixtral-8x7B-Instruct-v0.1_response"]
    reply = await client.chat.completions.create(model="mixtral", messages=MSG)
    assert reply.choices[0].message.content == "no idea"


async def test_models_strict_models_and_unknown_models(start_sim: StartSim) -> None:
    sim = await start_sim({"models": {"scripted": {}}}, catalog_names=["gpt-4o", "scripted"])
    listed = [m.id async for m in sdk(sim).models.list()]
    assert listed == ["scripted", "gpt-4o"]
    assert (await post(sim, chat("never-heard-of-it")))[0] == 200

    strict = await start_sim({"strict_models": True, "models": {"scripted": {}}}, catalog_names=["gpt-4o"])
    assert (await post(strict, chat("gpt-4o")))[0] == 200
    with pytest.raises(openai.NotFoundError) as info:
        await sdk(strict).chat.completions.create(model="nope", messages=MSG)
    assert info.value.code == "model_not_found"

    alone = await start_sim({"catalog_models": False, "models": {"only": {}}}, catalog_names=["gpt-4o"])
    assert [m.id async for m in sdk(alone).models.list()] == ["only"]


async def test_a_model_refuses_the_settings_its_api_refuses() -> None:
    """gpt-4o-mini refuses reasoning_effort, a reasoning model a temperature but 1: OpenAI's 400s."""
    refusals = {"gpt-4o-mini": refused_params(False, True), "o3": refused_params(True, False)}
    async with await start(parse_script({}), catalog_names=[], refusals=refusals) as sim:
        client = sdk(sim)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, reasoning_effort="low")
        assert info.value.code == "unsupported_parameter" and info.value.param == "reasoning_effort"
        refused = "Unsupported parameter: 'reasoning_effort' is not supported with this model."
        assert refused in str(info.value)
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="gpt-4o-mini", input="hi", reasoning={"effort": "low"})
        assert info.value.param == "reasoning.effort"
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="o3", messages=MSG, temperature=0.2)
        assert info.value.code == "unsupported_value" and info.value.param == "temperature"
        assert "Only the default (1) value is supported." in str(info.value)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, verbosity="low")
        assert "Supported values are: 'medium'." in str(info.value) and info.value.param == "verbosity"
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, verbosity="medium")
        # The defaults are taken, and every other model takes everything.
        await client.chat.completions.create(model="o3", messages=MSG, temperature=1, reasoning_effort="low")
        await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, temperature=0.2)
        await client.chat.completions.create(model="m", messages=MSG, temperature=0.2, reasoning_effort="low")


async def test_a_model_refuses_an_effort_it_does_not_take() -> None:
    """o3 refuses "minimal" with OpenAI's 400, on /chat/completions and /responses; Claude Opus 4.5
    "max" on /messages, where Claude Haiku 4.5 refuses any effort. Models not listed take any."""
    efforts = {"o3": ("low", "medium", "high"), "claude-opus-4-5": ("low", "medium", "high")}
    refusals = {"claude-haiku-4-5": refused_params(False, True)}
    async with await start(parse_script({}), catalog_names=[], refusals=refusals, efforts=efforts) as sim:
        client = sdk(sim)
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="o3", messages=MSG, reasoning_effort="minimal")
        assert info.value.code == "unsupported_value" and info.value.param == "reasoning_effort"
        said = "'reasoning_effort' does not support 'minimal' with this model. Supported values are: "
        assert said + "'low', 'medium', and 'high'." in str(info.value)
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="o3", input="hi", reasoning={"effort": "xhigh"})
        assert info.value.param == "reasoning.effort"
        await client.chat.completions.create(model="o3", messages=MSG, reasoning_effort="low")
        await client.chat.completions.create(model="m", messages=MSG, reasoning_effort="minimal")
        async with anthropic.AsyncAnthropic(api_key="k", base_url=sim.url, max_retries=0) as claude:
            asked: dict[str, Any] = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
            create = claude.messages.create
            with pytest.raises(anthropic.BadRequestError, match="does not support 'max'"):
                await create(model="claude-opus-4-5", output_config={"effort": "max"}, **asked)
            with pytest.raises(anthropic.BadRequestError, match="effort"):
                await create(model="claude-haiku-4-5", output_config={"effort": "low"}, **asked)
            await create(model="claude-opus-4-5", output_config={"effort": "high"}, **asked)
            await create(model="claude-opus-4-6", output_config={"effort": "max"}, **asked)


def test_the_simulator_refuses_what_the_catalog_says_a_model_refuses() -> None:
    refusals = catalog_refusals()
    assert "reasoning_effort" in refusals["gpt-4o-mini"] and "temperature" in refusals["deepseek-reasoner"]
    assert "deepseek-ai/DeepSeek-V4-Flash" not in refusals  # not marked: sent as given
    efforts = catalog_efforts()
    assert efforts["claude-opus-4-5"] == ("low", "medium", "high")
    assert "deepseek-ai/DeepSeek-V4-Flash" not in efforts


def test_catalog_model_names_are_the_curated_models() -> None:
    names = catalog_model_names()
    assert "gpt-4o" in names and len(names) < 200  # curated only: the broad catalog has thousands


async def test_bad_requests_are_openai_errors(start_sim: StartSim) -> None:
    sim = await start_sim()
    for body, param in (
        (b'{"model": "m", "messages": [', None),
        (b"[1, 2]", None),
        (orjson.dumps({"messages": MSG}), "model"),
        (orjson.dumps({"model": "m"}), "messages"),
        (orjson.dumps(chat(max_tokens=0)), "max_tokens"),
    ):
        status, headers, raw = await post(sim, body)
        error = orjson.loads(raw)["error"]
        assert status == 400 and headers["Content-Type"] == "application/json"
        assert error["type"] == "invalid_request_error" and error["param"] == param
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.url}/nope") as response:
            assert response.status == 404
        async with session.get(f"{sim.url}/health") as response:
            assert await response.json() == {"status": "ok"}
        async with session.get(f"{sim.url}/sim/stats") as response:
            assert (await response.json())["rejected"] == 5


async def test_script_can_be_replaced_at_run_time(start_sim: StartSim) -> None:
    sim = await start_sim({"defaults": {"faults": {"unavailable": 1.0}}})
    assert (await post(sim, chat()))[0] == 503
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sim.url}/sim/script", data="defaults: {answer: {fixed: ok}}") as response:
            assert response.status == 200
        async with session.post(f"{sim.url}/sim/script", data="defaults: {bogus: 1}") as response:
            assert response.status == 400 and "bogus" in (await response.json())["error"]["message"]
    status, _, raw = await post(sim, chat())
    assert status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "ok"


async def test_create_app_works_with_aiohttp_test_utils() -> None:
    async with TestClient(TestServer(create_app(parse_script({}), catalog_names=[]))) as client:
        response = await client.post("/v1/chat/completions", json=chat())
        assert (await response.json())["choices"][0]["message"]["content"] == "Say hello to the simulator."


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        ({"colour": 1}, "colour"),
        ({"defaults": {"ttft": 5}}, "ttft"),
        ({"models": {"a": {"faults": {"rate_limit": 0.5, "meteor": 0.1}}}}, "models.a.faults"),
        ({"models": {"a": {"faults": {"rate_limit": 1.5}}}}, "models.a.faults.rate_limit"),
        ({"defaults": {"faults": {"rate_limit": 0.6, "reset": 0.6}}}, "sum"),
        ({"defaults": {"answer": {"fixed": "a", "lorem": 3}}}, "exactly one"),
        ({"defaults": {"answer": "shout"}}, "defaults.answer"),
        ({"defaults": {"answer": {"replay": {"csv": str(GSM8K), "column": "nope"}}}}, "'nope'"),
        ({"defaults": {"answer": {"replay": {"csv": "/nonexistent.csv", "column": "x"}}}}, "cannot read"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_script_validation_names_the_key(script: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match="sim script") as info:
        parse_script(script)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"seeed": 7}, "sim script: Object contains unknown field `seeed`; did you mean `seed`?"),
        (
            {"defaults": {"ttft": 5}},
            "sim script: Object contains unknown field `ttft` - at `defaults`; did you mean `ttft_ms`?",
        ),
        (
            {"models": {"a": {"faults": {"rate_limt": 0.1}}}},
            "sim script: Object contains unknown field `rate_limt` - at `models.a.faults`;"
            " did you mean `rate_limit`?",
        ),
        (
            {"defaults": {"answer": {"lorm": 3}}},
            "sim script: Object contains unknown field `lorm` - at `defaults.answer`; did you mean `lorem`?",
        ),
        (
            {"defaults": {"answer": {"replay": {"csv": "a.csv", "colum": "x"}}}},
            "sim script: Object contains unknown field `colum` - at `defaults.answer.replay`;"
            " did you mean `column`?",
        ),
        # Nothing close: the fields the section takes.
        (
            {"defaults": {"answer": {"zzz": 1}}},
            "sim script: Object contains unknown field `zzz` - at `defaults.answer`;"
            " expected one of fixed, lorem, replay",
        ),
    ],
)
def test_an_unknown_script_key_says_where_and_what_was_meant(script: dict[str, Any], message: str) -> None:
    """As the config does: a misspelt key in a sim script is named with its place and the key
    meant (it said neither for a key of `defaults` or of a model, only `unknown field `ttft``)."""
    with pytest.raises(ConfigError) as info:
        parse_script(script)
    assert str(info.value) == message


def test_a_bad_script_key_or_value_names_its_line(tmp_path: Path) -> None:
    """A sim script file's typo is found by its line, as a config file's is."""
    path = tmp_path / "my-faults.yaml"
    path.write_text("seed: 7\nmodels:\n  gpt-4o:\n    faults: {rate_limt: 0.5}\n")
    with pytest.raises(ConfigError) as info:
        load_script(path)
    assert str(info.value) == (
        f"{path}, line 4: Object contains unknown field `rate_limt` - at `models.gpt-4o.faults`;"
        " did you mean `rate_limit`?"
    )
    path.write_text("defaults:\n  ttft_ms: soon\n")
    with pytest.raises(ConfigError, match=r", line 2: Expected `float`, got `str` - at `defaults.ttft_ms`"):
        load_script(path)


def test_model_overrides_replace_fields_and_merge_faults(tmp_path: Path) -> None:
    (tmp_path / "answers.csv").write_text("prompt,good\nhi,hello\n")
    path = tmp_path / "sim.yaml"
    path.write_text(
        "defaults: {ttft_ms: 5, answer: {lorem: 3}, faults: {rate_limit: 0.1}}\n"
        "models:\n"
        "  a: {faults: {reset: 0.2}, answer: {replay: {csv: answers.csv, column: good}}}\n"
        "  b: {tokens_per_s: null}\n"
    )
    script = load_script(path)
    a = script.behaviour("a")
    assert a.ttft_ms == 5 and a.faults.rate_limit == 0.1 and a.faults.reset == 0.2
    assert not isinstance(a.answer, str) and a.answer.replay is not None
    assert a.answer.replay.csv == str(tmp_path / "answers.csv")  # relative to the script
    assert script.behaviour("unknown") is script.defaults
    with pytest.raises(ConfigError, match="does not exist"):
        load_script(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"defaults:\n  ttft_ms: [\n", "not valid YAML: expected the node content"),
        (b"defaults: {answer: {fixed: caf\xe9}}\n", "not UTF-8 text"),
    ],
)
def test_an_unreadable_script_is_one_line(tmp_path: Path, text: bytes, fragment: str) -> None:
    # `faregate sim --script` prints the error as one line (never PyYAML's multi-line report, never
    # a traceback), like a bad config.
    path = tmp_path / "sim.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load_script(path)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}: ") and fragment in line, line


@pytest.mark.e2e
def test_cli_registers_sim_and_prints_the_base_url(tmp_path: Path) -> None:
    from faregate.cli import sim as sim_cli

    app = typer.Typer()
    sim_cli.register(app)

    @app.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into `sim`
        pass

    help_text = CliRunner().invoke(app, ["sim", "--help"]).output
    assert "--script" in help_text and "--port" in help_text
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults: {bogus: 1}\n")
    # A bad script is one line from the console script, exit code 2.
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "sim", "--script", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("faregate: ") and "bogus" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    code = (
        "import typer; from faregate.cli import sim; app = typer.Typer(); sim.register(app); "
        "app.command('x')(lambda: None); app()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "sim", "--port", "0", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("faregate sim ready at http://127.0.0.1:") and line.rstrip().endswith("/v1")
    finally:
        process.terminate()
        process.wait(10)
