"""The Messages wire as clients speak it (wire/anthropic.py, wire/anthropic_stream.py): requests
to the internal chat body, answers and streams back, errors, count_tokens. Outputs are parsed
by the official `anthropic` SDK, through its own client on an in-process mock transport."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from faregate import counting, light_tokens, tokens, usage_estimate
from faregate.errors import InvalidRequest, RateLimited, UpstreamFailed, UpstreamFailure
from faregate.types import Attempt
from faregate.wire.anthropic import count_tokens, messages_to_chat
from faregate.wire.anthropic_replies import completion_to_message, error_body
from faregate.wire.anthropic_stream import messages_events, sse_frame
from faregate.wire.anthropic_upstream import chat_to_messages

EVENT = TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgo="
CACHE = {"type": "ephemeral"}

REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 512,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": CACHE}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "a cat", "cache_control": CACHE}],
                },
                {"type": "text", "text": "And so?"},
            ],
        },
    ],
    "tools": [
        {
            "name": "lookup",
            "description": "Look a thing up",
            "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            "cache_control": CACHE,
        }
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "metadata": {"user_id": "u-1"},
    "stream": True,
}


async def each(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://gateway.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def serve_sse(events: list[dict[str, Any]]) -> Callable[[httpx2.Request], httpx2.Response]:
    body = b"".join(sse_frame(e) for e in events)
    return lambda request: httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})


# --- requests ----------------------------------------------------------------------------------


def test_a_messages_request_becomes_the_chat_body() -> None:
    chat = messages_to_chat(copy.deepcopy(REQUEST))
    assert chat == {
        "model": "claude-sonnet-4-6",
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "You are terse.", "cache_control": CACHE}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"cat"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "toolu_1",
                "content": [{"type": "text", "text": "a cat", "cache_control": CACHE}],
            },
            {"role": "user", "content": [{"type": "text", "text": "And so?"}]},
        ],
        "max_tokens": 512,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    "description": "Look a thing up",
                },
                "cache_control": CACHE,
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_a_messages_request_survives_the_round_trip_through_the_chat_body() -> None:
    """Messages -> chat -> Messages gives the request back: nothing both sides can say is lost."""
    assert chat_to_messages(messages_to_chat(copy.deepcopy(REQUEST))) == REQUEST


def test_a_mark_on_a_tool_result_comes_back_on_its_last_block() -> None:
    """The same cache breakpoint: the end of the tool result."""
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok", "cache_control": CACHE}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [result]},
        ],
    }
    back = chat_to_messages(messages_to_chat(body))["messages"][1]["content"][0]
    assert back == {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": [{"type": "text", "text": "ok", "cache_control": CACHE}],
    }


@pytest.mark.parametrize(
    ("choice", "chat"),
    [
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "lookup"},
            {"tool_choice": {"type": "function", "function": {"name": "lookup"}}},
        ),
    ],
)
def test_tool_choices(choice: dict[str, Any], chat: dict[str, Any]) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": choice,
    }
    translated = messages_to_chat(body)
    assert {k: translated[k] for k in chat} == chat
    assert chat_to_messages(translated)["tool_choice"] == choice


def test_a_string_system_and_plain_content_stay_strings() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
    }
    chat = messages_to_chat(body)
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    back = chat_to_messages(chat)
    assert back["system"] == "Be brief."
    assert back["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_top_level_cache_control_marks_the_last_block() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "cache_control": CACHE,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert messages_to_chat(body)["messages"][-1]["content"] == [
        {"type": "text", "text": "hi", "cache_control": CACHE}
    ]


def test_a_tool_error_is_said_in_the_text_and_pdfs_become_file_parts() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True},
                    {
                        "type": "document",
                        "title": "a.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                    },
                ],
            },
        ],
    }
    messages = messages_to_chat(body)["messages"]
    assert messages[1] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert messages[2]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}
    ]
    assert (
        chat_to_messages(messages_to_chat(body))["messages"][1]["content"][1]
        == body["messages"][1]["content"][1]
    )


def test_output_config_becomes_response_format_and_effort() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
    }
    chat = messages_to_chat(body)
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert chat["reasoning_effort"] == "low"
    assert chat_to_messages(chat)["output_config"] == body["output_config"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"container": "c-1"}, "container"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"service_tier": "priority"}, "service_tier"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                                    }
                                ],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "", "signature": ""}]}
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_param(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(InvalidRequest) as info:
        messages_to_chat(body)
    assert info.value.status == 400
    assert info.value.param == param


@pytest.mark.parametrize(
    ("tool", "param", "said"),
    [
        ({"name": "lookup", "description": "d"}, "tools[0].input_schema", "needs an input_schema"),
        ({"type": "custom", "name": "lookup"}, "tools[0].input_schema", "needs an input_schema"),
        ({"input_schema": {"type": "object"}}, "tools[0].name", "needs a name"),
        ({"name": "", "input_schema": {"type": "object"}}, "tools[0].name", "needs a name"),
    ],
)
def test_a_client_tool_without_its_schema_or_name_is_told_so(
    tool: dict[str, Any], param: str, said: str
) -> None:
    """A client tool that misses a field is the client's mistake to fix, not a server tool."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    with pytest.raises(InvalidRequest) as info:
        messages_to_chat(body)
    assert info.value.param == param
    assert said in info.value.message and "server tool" not in info.value.message


@pytest.mark.parametrize("system", [[], ""])
def test_an_empty_system_prompt_is_no_system_message(system: Any) -> None:
    """Messages takes `system: []` (code that builds its blocks and has none); a chat system
    message with no content is refused by OpenAI-wire upstreams ("empty array")."""
    body = {"model": "m", "max_tokens": 5, "system": system, "messages": [{"role": "user", "content": "hi"}]}
    assert messages_to_chat(body)["messages"] == [{"role": "user", "content": "hi"}]


def test_disabled_thinking_and_gateway_fields_pass() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "disabled"},
        "faregate": {"tier": "economy"},
    }
    assert messages_to_chat(body)["faregate"] == {"tier": "economy"}


# --- answers -----------------------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None, **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "deepseek-v4-flash",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": usage or {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }


def test_a_text_answer_becomes_a_message_the_sdk_parses() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 5,
        "total_tokens": 1005,
        "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
        "cost": 0.0123,
    }
    body = completion({"role": "assistant", "content": "Hi there"}, "stop", usage)
    out = completion_to_message(body, model="claude-sonnet-4-6")
    message = Message.model_validate(out)
    assert message.id == "msg_abc"
    assert message.model == "claude-sonnet-4-6"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hi there")]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens == 100
    assert message.usage.cache_read_input_tokens == 600
    assert message.usage.cache_creation_input_tokens == 300
    assert message.usage.output_tokens == 5
    assert out["usage"]["cost"] == 0.0123


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
    ],
)
def test_stop_reasons(finish: str, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    out = completion_to_message(completion({"role": "assistant", "content": "x"}, finish, **extra))
    message = Message.model_validate(out)
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
    ]
    out = completion_to_message(
        completion({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")
    )
    message = Message.model_validate(out)
    assert [(b.type, b.id, b.name, b.input) for b in message.content if b.type == "tool_use"] == [
        ("tool_use", "call_1", "f", {"a": 1}),
        ("tool_use", "call_2", "g", {"arguments": "not json"}),
    ]


# --- streams -----------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-s1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}


STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
    chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
            ]
        }
    ),
    chunk({}, "tool_calls"),
    {
        "id": "chatcmpl-s1",
        "choices": [],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "total_tokens": 107,
            "prompt_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 50},
            "cost": 0.001,
        },
    },
]


async def test_a_chunk_stream_becomes_the_messages_event_sequence() -> None:
    events = await collect(messages_events(each(STREAM), model="claude-x", input_tokens=90))
    for event in events:
        if event["type"] != "ping":  # a keep-alive, outside the SDK's event union
            EVENT.validate_python(event)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"] == {"input_tokens": 90, "output_tokens": 0}
    assert [e["index"] for e in events if e["type"] == "content_block_start"] == [0, 1, 2]
    assert events[-2]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_creation_input_tokens": 50,
        "cache_read_input_tokens": 40,
        "cost": 0.001,
    }
    with sdk_client(serve_sse(events)).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Hello"  # type: ignore[union-attr]
    assert final.content[1].input == {"a": 1}  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 7)
    assert (final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens) == (40, 50)


async def test_a_stop_sequence_in_a_stream() -> None:
    chunks = [chunk({"content": "done"}), chunk({}, "stop", stop_reason="END")]
    events = await collect(messages_events(each(chunks), model="m"))
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


async def test_a_failure_mid_stream_ends_with_an_error_event_the_sdk_raises() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"content": "Hel"})
        raise UpstreamFailure("server_error", "HTTP 529: overloaded")

    events = await collect(messages_events(failing(), model="m"))
    assert [e["type"] for e in events][-2:] == ["content_block_stop", "error"]
    assert events[-1]["error"] == {"type": "overloaded_error", "message": "HTTP 529: overloaded"}
    with pytest.raises(anthropic.APIStatusError, match="overloaded"):
        with sdk_client(serve_sse(events)).messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            stream.get_final_message()


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (UpstreamFailure("rate_limited", "HTTP 429: slow down", status=429), "rate_limit_error"),
        (UpstreamFailure("server_error", "HTTP 529: overloaded", status=529), "overloaded_error"),
        (UpstreamFailure("server_error", "HTTP 503: busy", status=503), "overloaded_error"),
        (UpstreamFailure("server_error", "HTTP 500: boom", status=500), "api_error"),
        (UpstreamFailure("timeout", "stream stalled", status=200), "api_error"),
    ],
)
async def test_a_failure_mid_stream_is_typed_by_what_the_upstream_said(
    failure: UpstreamFailure, kind: str
) -> None:
    # A 500 is no overload, nor a 429: the SDKs and clients (Claude Code) act on the type.
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"content": "Hel"})
        raise failure

    events = await collect(messages_events(failing(), model="m"))
    assert events[-1]["error"] == {"type": kind, "message": failure.detail}


async def test_a_cut_stream_ends_with_an_error_not_a_stop() -> None:
    events = await collect(messages_events(each([chunk({"content": "Hel"})]), model="m"))
    assert events[-1]["type"] == "error"
    assert not any(e["type"] == "message_stop" for e in events)


async def test_a_failure_before_anything_is_sent_is_raised() -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        raise UpstreamFailure("timeout", "slow")
        yield {}

    with pytest.raises(UpstreamFailure):
        await collect(messages_events(failing(), model="m"))


# --- errors and count_tokens -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind", "sdk_error"),
    [
        (InvalidRequest("bad", param="x"), 400, "invalid_request_error", anthropic.BadRequestError),
        (RateLimited("slow down"), 429, "rate_limit_error", anthropic.RateLimitError),
        (
            UpstreamFailed([Attempt("m", "p", "server_error", 1.0)]),
            502,
            "api_error",
            anthropic.InternalServerError,
        ),
        (
            UpstreamFailed([Attempt("m", "p", "timeout", 1.0)], timeout=True),
            504,
            "timeout_error",
            anthropic.InternalServerError,
        ),
    ],
)
def test_errors_in_anthropics_shape(error: Any, status: int, kind: str, sdk_error: type[Exception]) -> None:
    got_status, body = error_body(error, request_id="req_1")
    assert (got_status, body["type"], body["error"]["type"], body["request_id"]) == (
        status,
        "error",
        kind,
        "req_1",
    )
    client = sdk_client(lambda request: httpx2.Response(status, content=orjson.dumps(body)))
    client = client.with_options(max_retries=0)
    with pytest.raises(sdk_error) as info:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert error.message in str(info.value)


async def test_count_tokens_uses_the_gateways_count() -> None:
    body = {k: v for k, v in REQUEST.items() if k not in ("max_tokens", "stream")}
    chat = messages_to_chat(body, count_only=True)
    counted = await count_tokens(body)  # the light estimate, by default
    assert counted == {"input_tokens": counting.count_input(chat, light_tokens.count_text)}
    assert counted["input_tokens"] > 20
    usage_estimate.configure("tokenizer")
    try:
        assert await count_tokens(body) == {"input_tokens": tokens.count_input(chat)}
    finally:
        usage_estimate.configure("light")


# --- refusals ----------------------------------------------------------------------------------

REFUSAL = "I can't help with that."


def test_a_refusal_is_kept_in_the_message_with_stop_reason_refusal() -> None:
    """An OpenAI refusal (content null, `refusal` set) came out as an empty content list with
    stop_reason end_turn: the refusal's text was lost."""
    refused = {"role": "assistant", "content": None, "refusal": REFUSAL}
    out = completion_to_message(completion(refused, "stop"))
    message = Message.model_validate(out)
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", REFUSAL)]
    assert message.stop_reason == "refusal"


async def test_a_streamed_refusal_is_kept_in_the_stream_with_stop_reason_refusal() -> None:
    chunks = [
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't "}),
        chunk({"refusal": "help with that."}),
        chunk({}, "stop"),
    ]
    events = await collect(messages_events(each(chunks), model="m"))
    with sdk_client(serve_sse(events)).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", REFUSAL)]
    assert final.stop_reason == "refusal"


@pytest.mark.parametrize("stream", ["true", 1, {"on": True}])
def test_a_stream_that_is_not_a_boolean_is_a_400(stream: Any) -> None:
    """`stream: "true"` was taken as false: a whole JSON answer to a client that asked for events
    (the chat wire refuses it, as Anthropic does)."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with pytest.raises(InvalidRequest) as info:
        messages_to_chat(body)
    assert info.value.param == "stream"


# Two tool calls as Ollama, StepFun or GLM behind DashScope give them: without an id.
NO_IDS = [
    {"index": 0, "type": "function", "function": {"name": "f", "arguments": "{}"}},
    {"index": 1, "type": "function", "function": {"name": "g", "arguments": "{}"}},
]


async def test_tool_calls_without_an_id_get_one_whole_or_streamed() -> None:
    """An upstream that gave its tool calls no id made tool_use blocks with id "": the client
    could not say which call a tool_result answers (and Anthropic refuses an empty id)."""
    whole = Message.model_validate(
        completion_to_message(
            completion({"role": "assistant", "content": None, "tool_calls": NO_IDS}, "tool_calls")
        )
    )
    streamed_events = await collect(
        messages_events(
            each([chunk({"tool_calls": [call]}) for call in NO_IDS] + [chunk({}, "tool_calls")]), model="m"
        )
    )
    with sdk_client(serve_sse(streamed_events)).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        streamed = stream.get_final_message()
    for message in (whole, streamed):
        ids = [b.id for b in message.content if b.type == "tool_use"]
        assert len(ids) == 2 and len(set(ids)) == 2
        assert all(i.startswith("toolu_") and len(i) > len("toolu_") for i in ids)


async def test_tool_calls_that_finish_with_stop_stop_with_tool_use() -> None:
    """Gemini's OpenAI-compatible endpoint finishes an answer of tool calls with "stop": the
    Messages client got stop_reason end_turn, and an agent loop (Claude Code, the SDK's tool
    runner) that runs tools on tool_use ended the turn with the calls unrun."""
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    whole = completion_to_message(
        completion({"role": "assistant", "content": None, "tool_calls": calls}, "stop")
    )
    assert whole["stop_reason"] == "tool_use"
    chunks = [chunk({"tool_calls": [{"index": 0, **calls[0]}]}), chunk({}, "stop")]
    events = await collect(messages_events(each(chunks), model="m"))
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # Text alone still ends its turn.
    text = await collect(messages_events(each([chunk({"content": "hi"}), chunk({}, "stop")]), model="m"))
    assert text[-2]["delta"]["stop_reason"] == "end_turn"


# Two parallel calls as Gemini's OpenAI-compatible endpoint streams them: one index (here none).
ONE_INDEX = [
    chunk({"tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
    chunk({"tool_calls": [{"function": {"arguments": '{"city": "Paris"}'}}]}),
    chunk({"tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}]}),
    chunk({"tool_calls": [{"function": {"arguments": '{"city": "Rome"}'}}]}),
    chunk({}, "tool_calls"),
]


async def test_parallel_calls_streamed_under_one_index_stay_apart() -> None:
    """Gemini streams parallel tool calls without an index (or all at 0), each with its own id:
    they were one tool_use block (the second's name lost, its input appended to the first's),
    which the SDK cannot parse. A new id is a new call."""
    events = await collect(messages_events(each(ONE_INDEX), model="m"))
    with sdk_client(serve_sse(events)).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("call_a", "f", {"city": "Paris"}),
        ("call_b", "g", {"city": "Rome"}),
    ]


async def test_a_call_whose_later_deltas_bring_another_id_stays_one_call() -> None:
    """Poolside gives a call's later deltas another id than its first (without the name): still
    one call, not one per id."""
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": '"Paris"}'}}]}),
        chunk({}, "tool_calls"),
    ]
    events = await collect(messages_events(each(chunks), model="m"))
    with sdk_client(serve_sse(events)).messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        ("call_a", "f", {"city": "Paris"})
    ]
