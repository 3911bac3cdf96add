"""Tool calls as the chat wire gives them to a chat client (server/client_wires.ChatWire): each
with an id, and streamed, each under an index of its own, whatever the upstream sent. Outputs
are read by the official `openai` SDK's own client (its stream accumulator included) on an
in-process mock transport."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import orjson

from faregate.server.client_wires import CHAT
from faregate.types import JSON, Completion, Usage
from test_pipeline import Harness, harness

__all__ = ["harness"]  # the fixture, imported

ASKED: JSON = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def sdk_client(body: bytes, content_type: str) -> openai.OpenAI:
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, content=body, headers={"content-type": content_type})
    )
    return openai.OpenAI(
        api_key="k", base_url="http://gateway.test/v1", http_client=httpx2.Client(transport=transport)
    )


def completion(calls: list[JSON]) -> JSON:
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def chunk(delta: JSON, finish: str | None = None) -> JSON:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def streamed(harness: Harness, chunks: list[JSON]) -> tuple[list[JSON], Any]:
    """What a chat client streaming through the gateway receives for an upstream's `chunks`: the
    tool-call deltas, and the completion the SDK's stream helper makes of them."""
    usage = {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    harness.a.outcomes = [[*chunks, usage]]
    status, _, body = await harness.post({**ASKED, "model": "cheap", "stream": True})
    assert status == 200
    deltas = [
        call
        for frame in body.split(b"\n\n")
        if frame.startswith(b"data: {")
        for choice in orjson.loads(frame.removeprefix(b"data: "))["choices"]
        for call in choice["delta"].get("tool_calls") or ()
    ]
    with sdk_client(body, "text/event-stream").chat.completions.stream(**ASKED) as stream:
        final = stream.get_final_completion()
    return deltas, final


def calls_of(final: Any) -> list[tuple[str, str, str]]:
    return [(c.id, c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls]


# Two tool calls as Ollama, StepFun or GLM behind DashScope give them: without an id.
NO_IDS = [
    {"index": 0, "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
    {"index": 1, "type": "function", "function": {"name": "g", "arguments": '{"b": 2}'}},
]


def test_a_whole_answers_tool_calls_without_an_id_get_one() -> None:
    """The SDK's types want a str id, and the client must send it back as tool_call_id (which
    OpenAI, and any provider the gateway may route the next turn to, requires)."""
    whole = CHAT.answer(completion([{k: v for k, v in c.items() if k != "index"} for c in NO_IDS]), ASKED)
    answer = sdk_client(whole, "application/json").chat.completions.create(**ASKED)
    ids = [call.id for call in answer.choices[0].message.tool_calls or ()]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(i.startswith("call_") and len(i) > 5 for i in ids)


def test_a_whole_answer_whose_calls_have_ids_is_written_as_it_came() -> None:
    body = completion([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    assert CHAT.answer(body, ASKED) == orjson.dumps(body)


async def test_streamed_tool_calls_without_an_id_get_one_on_their_first_delta_only(harness: Harness) -> None:
    # Each call in two deltas: its name, then its arguments.
    chunks = [chunk({"role": "assistant", "content": ""})]
    for call in NO_IDS:
        fn = call["function"]
        chunks.append(chunk({"tool_calls": [{**call, "function": {"name": fn["name"], "arguments": ""}}]}))
        chunks.append(
            chunk({"tool_calls": [{"index": call["index"], "function": {"arguments": fn["arguments"]}}]})
        )
    chunks.append(chunk({}, "tool_calls"))
    deltas, final = await streamed(harness, chunks)
    assert ["id" in delta for delta in deltas] == [True, False, True, False]
    (f_id, *f), (g_id, *g) = calls_of(final)
    assert f == ["f", '{"a": 1}'] and g == ["g", '{"b": 2}']
    assert f_id != g_id and all(i.startswith("call_") and len(i) > 5 for i in (f_id, g_id))


async def test_an_id_that_comes_after_the_one_made_does_not_join_it(harness: Harness) -> None:
    """The SDK appends a later delta's id to the call's: the client must see one id."""
    chunks = [
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "late", "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    _, final = await streamed(harness, chunks)
    ((made, name, arguments),) = calls_of(final)
    assert made.startswith("call_") and "late" not in made and (name, arguments) == ("f", "{}")


# Two parallel calls as Gemini's OpenAI-compatible endpoint streams them: no index, each call's
# first delta with its id and name.
ONE_INDEX = [
    chunk({"tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    chunk({"tool_calls": [{"function": {"arguments": '{"city": "Paris"}'}}]}),
    chunk({"tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}]}),
    chunk({"tool_calls": [{"function": {"arguments": '{"city": "Rome"}'}}]}),
    chunk({}, "tool_calls"),
]


async def test_parallel_calls_streamed_under_one_index_get_one_each(harness: Harness) -> None:
    """Without an index the SDK's stream helper raised; under one index it made one call of the
    first's id and name, the second's run into it and its arguments two JSON objects."""
    for at_zero in (False, True):
        chunks = orjson.loads(orjson.dumps(ONE_INDEX))
        if at_zero:
            for each in chunks[:-1]:
                each["choices"][0]["delta"]["tool_calls"][0]["index"] = 0
        deltas, final = await streamed(harness, chunks)
        assert [delta["index"] for delta in deltas] == [0, 0, 1, 1]
        assert calls_of(final) == [("call_a", "f", '{"city": "Paris"}'), ("call_b", "g", '{"city": "Rome"}')]


async def test_a_stream_of_well_formed_calls_is_relayed_as_it_came(harness: Harness) -> None:
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}]}),
    ]
    deltas, _ = await streamed(harness, [*chunks, chunk({}, "tool_calls")])
    assert deltas == [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks]


async def test_a_kept_answer_replayed_as_a_stream_has_ids_too(harness: Harness) -> None:
    calls = [{k: v for k, v in c.items() if k != "index"} for c in NO_IDS]
    body = completion(calls)
    harness.a.outcomes = [Completion(body, Usage(10, 2))]
    ask = {**ASKED, "model": "cheap", "temperature": 0}
    await harness.post(ask)
    await harness.cached()
    status, headers, raw = await harness.post({**ask, "stream": True})
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    with sdk_client(raw, "text/event-stream").chat.completions.stream(**ASKED) as stream:
        ids = [call.id for call in stream.get_final_completion().choices[0].message.tool_calls or ()]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)


def test_a_whole_answers_call_without_arguments_says_an_empty_object() -> None:
    """Some upstreams give "" (or nothing) for a function without parameters, where OpenAI says
    "{}": the client json.loads them, and "" is not JSON."""
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}},
        {"id": "call_2", "type": "function", "function": {"name": "today"}},
        {"id": "call_3", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
    ]
    whole = CHAT.answer(completion(calls), ASKED)
    answer = sdk_client(whole, "application/json").chat.completions.create(**ASKED)
    said = [(c.id, orjson.loads(c.function.arguments)) for c in answer.choices[0].message.tool_calls or ()]
    assert said == [("call_1", {}), ("call_2", {}), ("call_3", {"a": 1})]


async def test_a_streamed_call_that_ends_without_arguments_says_an_empty_object(harness: Harness) -> None:
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "now", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"a": 1}'}}]}),
        chunk({"tool_calls": [{"index": 2, "id": "call_3", "function": {"name": "today"}}]}),
        chunk({}, "tool_calls"),
    ]
    deltas, final = await streamed(harness, chunks)
    # One more delta each for the two without any, with the finish; the other's are its own.
    assert deltas[-2:] == [
        {"index": 0, "function": {"arguments": "{}"}},
        {"index": 2, "function": {"arguments": "{}"}},
    ]
    assert calls_of(final) == [
        ("call_1", "now", "{}"),
        ("call_2", "f", '{"a": 1}'),
        ("call_3", "today", "{}"),
    ]
