"""The Responses API wire (wire/responses.py, wire/responses_stream.py) and the embeddings wire
(wire/embeddings.py). Outputs are parsed by the official `openai` SDK: its types, and its own
client (stream accumulator included) on an in-process mock transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from faregate import tokens
from faregate.errors import InvalidRequest, UpstreamFailure
from faregate.types import Price, Usage
from faregate.wire import embeddings
from faregate.wire.responses import completion_to_response, responses_to_chat
from faregate.wire.responses_stream import response_events, sse_frame

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look up",
    "parameters": {"type": "object"},
    "strict": True,
}


async def each(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def sdk_client(body: bytes, content_type: str = "text/event-stream") -> openai.OpenAI:
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, content=body, headers={"content-type": content_type})
    )
    return openai.OpenAI(
        api_key="k", base_url="http://gateway.test/v1", http_client=httpx2.Client(transport=transport)
    )


# --- requests ----------------------------------------------------------------------------------


def test_a_string_input_with_instructions() -> None:
    body = {
        "model": "gpt-4o",
        "input": "Hi",
        "instructions": "Be brief.",
        "max_output_tokens": 50,
        "temperature": 0.3,
    }
    assert responses_to_chat(body) == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "temperature": 0.3,
    }


def test_items_tools_and_function_calls() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look."}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"a"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "lookup"},
        "parallel_tool_calls": False,
        "text": {
            "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
        },
        "reasoning": {"effort": "low"},
        "store": True,
        "stream": True,
        "user": "u-1",
    }
    assert responses_to_chat(body) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"a"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object"},
                    "description": "Look up",
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": False,
        "user": "u-1",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "input[0].content[0]",
        ),
        (
            {
                "input": [
                    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}
                ]
            },
            "input[0].output[0]",
        ),
        ({"input": []}, "input"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_param(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "input": "hi", **change}
    with pytest.raises(InvalidRequest) as info:
        responses_to_chat(body)
    assert info.value.param == param


# --- answers -----------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "deepseek-v4-flash",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 9,
            "total_tokens": 39,
            "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 5},
            "cost": 0.0002,
        },
    }


def test_an_answer_becomes_a_response_the_sdk_parses() -> None:
    request = {"model": "fast", "input": "hi", "instructions": "Be brief.", "temperature": 0.3}
    out = completion_to_response(completion({"role": "assistant", "content": "Hello"}), request, model="fast")
    response = Response.model_validate(out)
    assert response.id == "resp_xyz"
    assert response.status == "completed"
    assert response.output_text == "Hello"
    assert (response.instructions, response.temperature, response.model) == ("Be brief.", 0.3, "fast")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        30,
        9,
        39,
    )
    assert response.usage.input_tokens_details.cached_tokens == 10
    assert response.usage.input_tokens_details.cache_write_tokens == 5
    assert out["usage"]["cost"] == 0.0002


def test_tool_calls_become_function_call_items_and_a_cut_answer_is_incomplete() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"a"}'}}]
    response = Response.model_validate(
        completion_to_response(
            completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
        )
    )
    assert [(i.type, i.call_id, i.name, i.arguments) for i in response.output] == [  # type: ignore[union-attr]
        ("function_call", "call_1", "lookup", '{"q":"a"}')
    ]
    cut = Response.model_validate(
        completion_to_response(completion({"role": "assistant", "content": "Hel"}, "length"))
    )
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"


def test_a_call_with_no_arguments_has_an_empty_object_for_them() -> None:
    """A chat upstream may give a call of a function without parameters "" (or no) arguments;
    OpenAI's Responses API says "{}", which the client json.loads (and "" made it raise)."""
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}},
        {"id": "call_2", "type": "function", "function": {"name": "today"}},
    ]
    response = Response.model_validate(
        completion_to_response(
            completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
        )
    )
    assert [i.arguments for i in response.output] == ["{}", "{}"]  # type: ignore[union-attr]


# --- streams -----------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "created": 1700000000,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"a"}'}}]}),
    chunk({}, "tool_calls"),
    {
        "id": "chatcmpl-s",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    },
]


async def test_a_chunk_stream_becomes_the_typed_event_sequence() -> None:
    events = [
        e async for e in response_events(each(STREAM), model="fast", request={"model": "fast", "input": "hi"})
    ]
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="fast", input="hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["Hel", "lo"]
    assert final.output_text == "Hello"
    assert final.output[1].arguments == '{"q":"a"}'  # type: ignore[union-attr]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 4)


async def test_a_streamed_call_with_no_arguments_has_an_empty_object_for_them() -> None:
    """A call streamed with "" for its arguments and no delta after: its arguments are "{}" in
    the done events and the final Response, and its one delta says so (the deltas add up to it)."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}}
    stream = [chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [call]}), *STREAM[-2:]]
    events = [e async for e in response_events(each(stream), model="fast")]
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert deltas == ["{}"] and done["arguments"] == "{}"
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="fast", input="hi") as sdk_stream:
        final = sdk_stream.get_final_response()
    assert [i.arguments for i in final.output] == ["{}"]  # type: ignore[union-attr]


async def test_a_failure_mid_stream_ends_with_response_failed() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"content": "Hel"})
        raise UpstreamFailure("connection", "reset by peer")

    events = [e async for e in response_events(failing(), model="m")]
    for event in events:
        EVENT.validate_python(event)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "reset by peer"}
    cut = [e async for e in response_events(each(STREAM[:3]), model="m")]
    assert cut[-1]["type"] == "response.failed"


async def test_a_cut_answer_ends_incomplete() -> None:
    events = [
        e async for e in response_events(each([chunk({"content": "Hel"}), chunk({}, "length")]), model="m")
    ]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


# --- embeddings --------------------------------------------------------------------------------


def test_embedding_requests_are_checked() -> None:
    request = embeddings.parse_request(
        {"model": "e", "input": ["a b", [1, 2, 3]], "dimensions": 8, "encoding_format": "base64"}
    )
    assert request.inputs == ("a b", (1, 2, 3))
    assert embeddings.input_tokens(request) == tokens.count_text("a b") + 3
    assert embeddings.parse_request({"model": "e", "input": [5, 6]}).inputs == ((5, 6),)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "e", "input": ""}, "input"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": ["ok", ""]}, "input"),
        ({"model": "e", "input": ["x"] * 2049}, "input"),
        ({"model": "e", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "e", "input": "x", "extra": 1}, "extra"),
        # A token id JSON spells past 2**64 is read as a float: as an int it could not be sent on.
        ({"model": "e", "input": [[1e30]]}, "input"),
        ({"model": "e", "input": [[1.8446744073709552e19]]}, "input"),
    ],
)
def test_bad_embedding_requests_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        embeddings.parse_request(body)
    assert info.value.param == param


def test_embedding_answers_carry_our_model_the_cost_and_the_baseline_cost() -> None:
    upstream = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "text-embedding-3-small-upstream",
        "usage": {"prompt_tokens": 1200, "total_tokens": 1200},
    }
    usage = embeddings.usage_of(upstream)
    assert usage == Usage(1200, 0)
    cost = Price(Decimal("0.02"), Decimal(0)).cost(usage)
    assert cost == Decimal("0.000024")
    out = embeddings.response_body(upstream, "text-embedding-3-small", usage, cost, Decimal("0.000156"))
    parsed = CreateEmbeddingResponse.model_validate(out)
    assert (parsed.model, parsed.usage.prompt_tokens, out["usage"]["cost"]) == (
        "text-embedding-3-small",
        1200,
        0.000024,
    )
    assert out["usage"]["baseline_cost"] == 0.000156
    assert embeddings.is_answer(upstream, embeddings.parse_request({"model": "e", "input": "x"}))
    assert not embeddings.is_answer({"data": []}, embeddings.parse_request({"model": "e", "input": "x"}))
    assert embeddings.usage_of({"usage": {"prompt_tokens": -1}}) is None


async def test_a_streamed_refusal_becomes_refusal_events_and_a_refusal_part() -> None:
    """A refusal streamed as `delta.refusal` was dropped: the stream completed with no output,
    where the whole answer's translation gives a message with a refusal part."""
    chunks = [
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't "}),
        chunk({"refusal": "help."}),
        chunk({}, "stop"),
    ]
    events = [e async for e in response_events(each(chunks), model="m")]
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "response.refusal.delta" in [e["type"] for e in events]
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="m", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.refusal.delta"]
        final = stream.get_final_response()
    assert deltas == ["I can't ", "help."]
    parts = [p for item in final.output if item.type == "message" for p in item.content]
    assert [(p.type, getattr(p, "refusal", None)) for p in parts] == [("refusal", "I can't help.")]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function", "parameters": {"type": "object"}}]}, "tools[0].name"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call", "call_id": "call_1", "arguments": "{}"}]}, "input[0].name"),
        ({"input": [{"type": "function_call_output", "output": "ok"}]}, "input[0].call_id"),
    ],
)
def test_a_function_tool_or_call_item_missing_a_required_field_is_a_400_naming_it(
    change: dict[str, Any], param: str
) -> None:
    """As OpenAI answers them ("Missing required parameter"): sent on, they reached an upstream as
    a tool or call without a name or id, refused there or answered against no call."""
    with pytest.raises(InvalidRequest) as info:
        responses_to_chat({"model": "m", "input": "hi", **change})
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize("stream", ["true", 1, {"on": True}])
def test_a_stream_that_is_not_a_boolean_is_a_400(stream: Any) -> None:
    """`stream: "true"` was taken as false: a whole JSON answer to a client that asked for events."""
    with pytest.raises(InvalidRequest) as info:
        responses_to_chat({"model": "m", "input": "hi", "stream": stream})
    assert info.value.param == "stream"


@pytest.mark.parametrize(
    "deltas",
    [
        [{"content": "Let me look."}, {"refusal": "I can't."}],
        [
            {"content": "Let me look."},
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
            {"content": "Done."},
        ],
    ],
    ids=["text-then-refusal", "text-call-text"],
)
async def test_every_streamed_message_item_has_an_id_of_its_own(deltas: list[dict[str, Any]]) -> None:
    """Two message items in one stream (text and a refusal, or text after a tool call) both had
    the id msg_<response>: the SDK's stream helper refused the stream ("conflicting output
    identities") and the text was lost."""
    events = [e async for e in response_events(each([*map(chunk, deltas), chunk({}, "stop")]), model="m")]
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    assert len(added) == len(set(added)) == len(deltas)
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="m", input="hi") as stream:
        final = stream.get_final_response()
    assert [item.id for item in final.output] == added


async def test_tool_calls_without_an_id_get_a_call_id_whole_or_streamed() -> None:
    """An upstream that gave its tool calls no id (Ollama, StepFun, GLM behind DashScope) made
    function_call items with call_id "": a function_call_output could not name its call, and
    the SDK's stream helper refused two calls with one call_id."""
    calls = [
        {"index": 0, "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    whole = Response.model_validate(
        completion_to_response(
            completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
        )
    )
    chunks = [chunk({"tool_calls": [call]}) for call in calls] + [chunk({}, "tool_calls")]
    events = [e async for e in response_events(each(chunks), model="m")]
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="m", input="hi") as stream:
        streamed = stream.get_final_response()
    for response in (whole, streamed):
        call_ids = [item.call_id for item in response.output if item.type == "function_call"]
        assert len(call_ids) == 2 and len(set(call_ids)) == 2
        assert all(i.startswith("call_") and len(i) > len("call_") for i in call_ids)


async def test_parallel_calls_streamed_under_one_index_stay_apart() -> None:
    """Gemini streams parallel tool calls without an index (or all at 0), each with its own id:
    they were one function_call item, its arguments two JSON objects run together. A new id is
    a new call."""
    chunks = [
        chunk(
            {"tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"function": {"arguments": '{"city": "Paris"}'}}]}),
        chunk(
            {"tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"function": {"arguments": '{"city": "Rome"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    events = [e async for e in response_events(each(chunks), model="m")]
    client = sdk_client(b"".join(sse_frame(e) for e in events))
    with client.responses.stream(model="m", input="hi") as stream:
        final = stream.get_final_response()
    assert [(i.call_id, i.name, i.arguments) for i in final.output if i.type == "function_call"] == [
        ("call_a", "f", '{"city": "Paris"}'),
        ("call_b", "g", '{"city": "Rome"}'),
    ]
