"""Anthropic as a provider: the chat body to a Messages request (wire/anthropic_upstream.py),
answers and event streams back to internal completions and chunks
(wire/anthropic_upstream_answers.py), and the provider over the production connection pool
against an in-process Messages server (the transport seam)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from anthropic.types import ToolChoiceParam
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ConfigDict, TypeAdapter

from faregate.catalog.models import Offer
from faregate.config import ProviderSettings, parse_settings
from faregate.errors import InvalidRequest, UpstreamFailure, UpstreamRejected
from faregate.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider
from faregate.providers.base import UpstreamCall
from faregate.providers.http import ConnectionPool
from faregate.providers.registry import ProviderRegistry, make_upstream_pool
from faregate.providers.upstream_failures import overflows_context
from faregate.types import JSON, Price, Usage
from faregate.wire.anthropic_replies import completion_to_message
from faregate.wire.anthropic_upstream import DEFAULT_MAX_TOKENS, EMPTY_USER_TEXT, chat_to_messages
from faregate.wire.anthropic_upstream_answers import chat_chunks, message_to_completion, usage_of_message
from faregate.wire.usage import usage_from

PARAMS = TypeAdapter(MessageCreateParamsNonStreaming)
KEY_ENV = "FAREGATE_TEST_ANTHROPIC_KEY"

MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "text", "text": "Looking it up. "},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "output_tokens": 30,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 5000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
    },
}


def events(*items: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in items
    )


STREAM_EVENTS = [
    {
        "type": "message_start",
        "message": {
            **MESSAGE,
            "content": [],
            "stop_reason": None,
            "usage": {
                "input_tokens": 12,
                "output_tokens": 1,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 5000,
            },
        },
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"q":'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"cat"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 30},
    },
    {"type": "message_stop"},
]


async def each(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


# --- the chat body to a Messages request -------------------------------------------------------


def test_the_default_limit_is_never_above_the_models_own_maximum() -> None:
    # Messages needs max_tokens; a model that allows 4,096 refuses a request for 8,192 (a 400).
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_to_messages(ask)["max_tokens"] == DEFAULT_MAX_TOKENS
    assert chat_to_messages(ask, 4096)["max_tokens"] == 4096
    assert chat_to_messages(ask, 64000)["max_tokens"] == DEFAULT_MAX_TOKENS
    assert chat_to_messages({**ask, "max_tokens": 100}, 4096)["max_tokens"] == 100


@pytest.mark.parametrize("spelled", ["image/jpg", "image/JPEG", "image/pjpeg"])
def test_a_jpeg_data_url_is_sent_as_image_jpeg(spelled: str) -> None:
    # OpenAI and browsers take image/jpg; the Messages API refuses any media type but image/jpeg,
    # png, gif and webp (a 400 for a request OpenAI would have answered).
    part = {"type": "image_url", "image_url": {"url": f"data:{spelled};base64,/9j/"}}
    out = chat_to_messages({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    (block,) = out["messages"][0]["content"]
    assert block["source"] == {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}


def test_a_chat_body_becomes_a_messages_request_the_sdk_accepts() -> None:
    body = {
        "model": "claude-sonnet-4-6",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 300,
        "stop": "END",
        "temperature": 0.2,
        "user": "u-9",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        "seed": 7,
        "stream_options": {"include_usage": True},
        "prompt_cache_key": "k1",
    }
    out = chat_to_messages(body)
    PARAMS.validate_python(out)
    assert out == {
        "model": "claude-sonnet-4-6",
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "c1", "content": "4"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        "max_tokens": 300,
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-9"},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }


def test_openais_verbosity_hint_is_not_sent_to_a_messages_model() -> None:
    """`verbosity` (a chat field, and a Responses client's text.verbosity) is one of OpenAI's
    hints that Messages has no field for, like prompt_cache_key: every OpenAI-wire model without
    it ignores it, so a Messages model must not make the whole request a 400."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "verbosity": "low"}
    out = chat_to_messages(body)
    PARAMS.validate_python(out)
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS,
    }


@pytest.mark.parametrize(
    ("sampling", "sent"),
    [
        # OpenAI's playground code and many UIs send top_p 1 beside the temperature they set.
        ({"temperature": 0.2, "top_p": 1}, {"temperature": 0.2}),
        ({"temperature": 1, "top_p": 0.9}, {"top_p": 0.9}),
        ({"temperature": 1.0, "top_p": 1.0}, {"temperature": 1.0}),
        ({"temperature": 0.2}, {"temperature": 0.2}),
        ({"top_p": 0.9}, {"top_p": 0.9}),
        # Both set to a value of their own: sent, and a model that takes only one says so.
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
    ],
)
def test_a_neutral_temperature_or_top_p_beside_the_other_is_not_sent(
    sampling: dict[str, float], sent: dict[str, float]
) -> None:
    """Claude Sonnet 4.5, Haiku 4.5, Opus 4.1 and every later model refuse a request with both
    (400 "`temperature` and `top_p` cannot both be specified for this model"); one at its neutral
    value (1, Messages' own default for both) says nothing the other does not."""
    out = chat_to_messages({"model": "m", "messages": [{"role": "user", "content": "hi"}], **sampling})
    assert {k: out[k] for k in ("temperature", "top_p") if k in out} == sent


def test_without_max_tokens_the_default_is_asked_for() -> None:
    out = chat_to_messages({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert out["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_what_messages_cannot_say_is_refused(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(InvalidRequest) as info:
        chat_to_messages(body)
    assert info.value.param == param


def test_empty_user_text_is_not_sent_as_an_empty_block() -> None:
    # Messages refuses a text block that is empty or only whitespace (a 400, "text content
    # blocks must be non-empty"); OpenAI takes them. Blank blocks are dropped, a cache mark on
    # one moving to the block before it (the same prefix); a system left blank is none.
    mark = {"type": "ephemeral"}
    parts = [
        {"type": "text", "text": "hi"},
        {"type": "text", "text": "", "cache_control": mark},
        {"type": "text", "text": " \n"},
    ]
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": ""}, {"role": "user", "content": parts}],
    }
    out = chat_to_messages(body)
    PARAMS.validate_python(out)
    assert "system" not in out
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": mark}]}
    ]


@pytest.mark.parametrize(
    "history",
    [
        [],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
    ],
)
@pytest.mark.parametrize("empty", ["", [{"type": "text", "text": ""}], [], None])
def test_an_empty_user_message_is_still_the_users_turn(history: list[dict[str, Any]], empty: Any) -> None:
    # Dropping the turn would end the conversation on the assistant (a prefill to continue,
    # which newer models refuse) or leave none at all: it keeps a placeholder text instead.
    out = chat_to_messages({"model": "m", "messages": [*history, {"role": "user", "content": empty}]})
    PARAMS.validate_python(out)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"][-len(history) - 1 :]
    (block,) = out["messages"][-1]["content"]
    assert block == {"type": "text", "text": EMPTY_USER_TEXT}


def test_an_empty_user_message_after_tool_results_adds_nothing() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "user", "content": ""},
    ]
    out = chat_to_messages({"model": "m", "messages": messages})
    PARAMS.validate_python(out)
    assert out["messages"][-1] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "4"}],
    }


@pytest.mark.parametrize(
    ("effort", "sent"),
    [
        ("none", "low"),
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("xhigh", "xhigh"),
    ],
)
def test_every_openai_reasoning_effort_becomes_one_messages_accepts(effort: str, sent: str) -> None:
    # Messages' effort starts at "low": OpenAI's "none" and "minimal" were passed on as they came
    # and refused (a 400 for a request OpenAI answers). Thinking stays off: it is never asked for.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": effort}
    out = chat_to_messages(body)
    PARAMS.validate_python(out)
    assert out["output_config"] == {"effort": sent}
    assert "thinking" not in out


# --- answers and streams back ------------------------------------------------------------------


def test_a_message_becomes_a_completion_with_cache_usage() -> None:
    body, usage = message_to_completion(MESSAGE)
    ChatCompletion.model_validate(body)
    assert usage == Usage(
        7012, 30, cache_read_tokens=5000, cache_write_tokens=2000, cache_write_1h_tokens=500
    )
    assert usage_from(body) == usage
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Looking it up. "
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"cat"}'}}
    ]


def test_a_message_survives_the_round_trip_through_the_completion() -> None:
    body, _ = message_to_completion(MESSAGE)
    back = completion_to_message(body)
    assert {k: back[k] for k in ("id", "model", "content", "stop_reason", "stop_sequence")} == {
        k: MESSAGE[k] for k in ("id", "model", "content", "stop_reason", "stop_sequence")
    }
    assert back["usage"] == MESSAGE["usage"]


def test_a_stop_sequence_is_kept() -> None:
    message = {
        **MESSAGE,
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
    }
    body, _ = message_to_completion(message)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["stop_reason"] == "END"
    back = completion_to_message(body)
    assert (back["stop_reason"], back["stop_sequence"]) == ("stop_sequence", "END")


async def test_an_event_stream_becomes_chunks() -> None:
    chunks = [c async for c in chat_chunks(each(STREAM_EVENTS))]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"cat"}'}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert usage_from(chunks[-1]) == Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000)


async def test_message_starts_usage_comes_just_before_the_first_content() -> None:
    """Exact for the input side should the stream be cut after content (message_delta's usage
    replaces it at the end); not before the content, so a stream that fails before any is not
    billed its prompt."""
    chunks = [c async for c in chat_chunks(each(STREAM_EVENTS))]
    usages = [(i, usage_from(c)) for i, c in enumerate(chunks) if not c["choices"]]
    first_text = next(
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content")
    )
    assert usages[0] == (first_text - 1, Usage(7012, 1, cache_read_tokens=5000, cache_write_tokens=2000))
    assert usages[-1] == (len(chunks) - 1, Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000))
    failing = [
        STREAM_EVENTS[0],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    seen: list[JSON] = []
    with pytest.raises(UpstreamFailure):
        async for c in chat_chunks(each(failing)):
            seen.append(c)
    assert all(c["choices"] for c in seen)


async def test_an_error_event_is_a_retryable_failure() -> None:
    stream = [
        STREAM_EVENTS[0],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    with pytest.raises(UpstreamFailure) as info:
        _ = [c async for c in chat_chunks(each(stream))]
    assert info.value.retryable and "overloaded_error: Overloaded" in info.value.detail


# --- the provider over the pool ----------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    url: str = ""
    handler: Handler | None = None
    seen: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        state.seen.append((dict(request.headers), orjson.loads(await request.read())))
        assert state.handler is not None
        return await state.handler(request)

    app = web.Application()
    app.router.add_post("/v1/messages", dispatch)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/v1"))
    yield state
    await server.close()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = make_upstream_pool()
    yield pool
    await pool.close()


@pytest.fixture
def provider(upstream: Upstream, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch) -> AnthropicProvider:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test")
    settings = ProviderSettings(base_url=upstream.url, api_key_env=KEY_ENV, protocol="anthropic")
    return AnthropicProvider("anthropic", settings, pool)


def call(stream: bool = False, **extra: Any) -> UpstreamCall:
    offer = Offer("claude-sonnet-4-6", "anthropic", "claude-sonnet-4-6", Price(Decimal(3), Decimal(15)), True)
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hello"}],
        **extra,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return UpstreamCall(offer, body, stream, 5.0, 5.0)


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    return handler


def sse_reply(data: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(data)
        await resp.write_eof()
        return resp

    return handler


async def test_the_provider_bounds_the_default_limit_by_the_calls_model_maximum(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    upstream.handler = json_reply(MESSAGE)
    await provider.complete(dataclasses.replace(call(), max_output_tokens=4096))
    assert upstream.seen[0][1]["max_tokens"] == 4096


async def test_complete_sends_the_messages_wire_and_bills_the_cache(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    upstream.handler = json_reply(MESSAGE)
    completion = await provider.complete(call(max_tokens=100))
    headers, body = upstream.seen[0]
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "Authorization" not in headers
    assert body == {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "max_tokens": 100,
    }
    assert completion.usage == Usage(
        7012, 30, cache_read_tokens=5000, cache_write_tokens=2000, cache_write_1h_tokens=500
    )
    price = Price(Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6))
    # 12 x 3 + 5000 x 0.30 + 1500 x 3.75 + 500 x 6 + 30 x 15, per million.
    assert price.cost(completion.usage) == Decimal("0.010611")


async def test_stream_yields_internal_chunks(
    upstream: Upstream, provider: AnthropicProvider, pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply(events(*STREAM_EVENTS))
    chunks = [c async for c in provider.stream(call(stream=True))]
    assert upstream.seen[0][1]["stream"] is True
    assert "stream_options" not in upstream.seen[0][1]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert usage_from(chunks[-1]) == Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000)
    assert pool.in_use == 0


async def test_an_overloaded_stream_fails_retryably(upstream: Upstream, provider: AnthropicProvider) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.handler = sse_reply(events(STREAM_EVENTS[0], error))
    with pytest.raises(UpstreamFailure) as info:
        _ = [c async for c in provider.stream(call(stream=True))]
    assert info.value.kind == "server_error" and info.value.retryable
    # The head said 200; the event's type says 529, as Anthropic's errors table has it: an offer
    # out of capacity, for the capacity checks (a Messages client's 529) and the record.
    assert info.value.status == 529
    rate_limited = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    upstream.handler = sse_reply(events(STREAM_EVENTS[0], rate_limited))
    with pytest.raises(UpstreamFailure) as info:
        _ = [c async for c in provider.stream(call(stream=True))]
    assert (info.value.kind, info.value.status) == ("rate_limited", 429)


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (429, "rate_limited", "rate_limit_error"),
        (529, "server_error", "overloaded_error"),
        (500, "server_error", "api_error"),
    ],
)
async def test_429_and_5xx_are_retryable(
    upstream: Upstream, provider: AnthropicProvider, status: int, kind: str, error_type: str
) -> None:
    body = {"type": "error", "error": {"type": error_type, "message": "try later"}}
    upstream.handler = json_reply(body, status, {"retry-after": "2"})
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(call())
    assert (info.value.kind, info.value.status, info.value.retryable) == (kind, status, True)
    assert info.value.detail == f"HTTP {status}: try later"
    if status == 429:
        assert info.value.retry_after == 2.0


async def test_other_4xx_is_rejected(upstream: Upstream, provider: AnthropicProvider) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}
    upstream.handler = json_reply(body, 400)
    with pytest.raises(UpstreamRejected) as info:
        await provider.complete(call())
    assert (info.value.status, info.value.message) == (
        400,
        "anthropic rejected the request: max_tokens: too big",
    )


async def test_a_bad_key_is_the_providers_fault(upstream: Upstream, provider: AnthropicProvider) -> None:
    upstream.handler = json_reply(
        {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}, 401
    )
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(call())
    assert info.value.kind == "server_error"
    assert f"check ${KEY_ENV}" in info.value.detail


async def test_an_account_out_of_credit_is_the_providers_fault(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    # Anthropic says so with a 400 invalid_request_error, not a 402: the request is fine, our
    # account is not, so another provider may serve it (a 402 from an OpenAI-wire one does too).
    message = (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    )
    upstream.handler = json_reply(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}, 400
    )
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(call())
    assert (info.value.kind, info.value.status, info.value.retryable) == ("server_error", 400, True)
    assert info.value.detail == f"provider account needs payment (HTTP 400): {message}"


async def test_a_prompt_too_long_for_the_window_is_told_apart_from_other_400s(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    # Anthropic's words for it (no code): the attempt loop moves on to a model with a larger window.
    message = "prompt is too long: 208310 tokens > 200000 maximum"
    upstream.handler = json_reply(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}, 400
    )
    with pytest.raises(UpstreamRejected) as info:
        await provider.complete(call())
    assert info.value.status == 400 and overflows_context(info.value)


async def test_what_messages_cannot_say_is_refused_before_any_call(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    with pytest.raises(UpstreamRejected) as info:
        await provider.complete(call(n=2))
    assert (info.value.status, info.value.param) == (400, "n")
    assert "anthropic (Messages wire) cannot take this request: n > 1" in info.value.message
    with pytest.raises(UpstreamRejected):
        _ = [c async for c in provider.stream(call(stream=True, logprobs=True))]
    assert upstream.seen == []


async def test_a_chat_body_where_a_message_belongs_is_a_bad_response(
    upstream: Upstream, provider: AnthropicProvider
) -> None:
    upstream.handler = json_reply({"choices": []})
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(call())
    assert info.value.kind == "bad_response"


async def test_the_registry_builds_it_by_protocol(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    settings = parse_settings(
        {"providers": {"claude": {"base_url": upstream.url, "api_key_env": KEY_ENV, "protocol": "anthropic"}}}
    )
    registry = ProviderRegistry.create(settings)
    try:
        assert isinstance(registry.get("claude"), AnthropicProvider)
    finally:
        await registry.close()
        await asyncio.sleep(0)


# --- review: tool choice and streamed tool arguments -------------------------------------------

TOOL_CHOICE = TypeAdapter(ToolChoiceParam, config=ConfigDict(extra="forbid"))


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "f"}}]
)
def test_parallel_tool_calls_false_gives_a_tool_choice_messages_accepts(choice: Any) -> None:
    """ToolChoiceNone has no disable_parallel_tool_use: sending it is a 400 from Anthropic."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": choice,
        "parallel_tool_calls": False,
    }
    out = chat_to_messages(body)
    TOOL_CHOICE.validate_python(out["tool_choice"])
    if choice == "none":
        assert out["tool_choice"] == {"type": "none"}


# Anthropic's pattern for tool_use ids (and the tool_use_id naming one): else a 400,
# "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'".
TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def test_tool_call_ids_other_upstreams_made_are_ones_messages_accepts() -> None:
    """A conversation whose calls another model made (Kimi K2 names them `functions.f:0`) goes
    on with Claude: every id as Anthropic's pattern allows, each result still naming its call,
    distinct ids still distinct, and an id already allowed untouched."""
    ids = ["functions.f:0", "functions_f_0", "functions.f:1", "call_ok-1"]
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
                ],
            },
            *({"role": "tool", "tool_call_id": i, "content": f"result of {i}"} for i in ids),
        ],
    }
    out = chat_to_messages(body)
    uses = [b["id"] for b in out["messages"][1]["content"]]
    results = {b["content"]: b["tool_use_id"] for b in out["messages"][2]["content"]}
    assert all(TOOL_USE_ID.match(i) for i in uses) and len(set(uses)) == len(ids)
    assert [results[f"result of {i}"] for i in ids] == uses
    assert uses[1] == "functions_f_0" and uses[3] == "call_ok-1"


def _streamed_arguments(chunks: list[dict[str, Any]]) -> dict[int, str]:
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or ():
                piece = call["function"].get("arguments") or ""
                arguments[call["index"]] = arguments.get(call["index"], "") + piece
    return arguments


def _tool_stream(start_input: dict[str, Any], pieces: list[str]) -> list[dict[str, Any]]:
    block = {"type": "tool_use", "id": "toolu_9", "name": "now", "input": start_input}
    deltas = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}
        for p in pieces
    ]
    return [
        STREAM_EVENTS[0],
        {"type": "content_block_start", "index": 0, "content_block": block},
        *deltas,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]


@pytest.mark.parametrize(
    ("start_input", "pieces", "expected"),
    [
        ({}, [""], {}),  # a tool without parameters: Anthropic streams one empty piece
        ({}, [], {}),
        ({"tz": "UTC"}, [], {"tz": "UTC"}),  # a Messages upstream that sends the input whole
        ({}, ['{"tz"', ': "UTC"}'], {"tz": "UTC"}),
    ],
)
async def test_streamed_tool_arguments_are_the_json_the_whole_answer_has(
    start_input: dict[str, Any], pieces: list[str], expected: dict[str, Any]
) -> None:
    events = _tool_stream(start_input, pieces)
    chunks = [c async for c in chat_chunks(each(events))]
    arguments = _streamed_arguments(chunks)
    assert orjson.loads(arguments[0]) == expected
    whole, _ = message_to_completion(
        {**MESSAGE, "content": [{"type": "tool_use", "id": "toolu_9", "name": "now", "input": expected}]}
    )
    assert orjson.loads(whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == expected


async def test_a_zero_input_count_in_message_delta_does_not_erase_message_starts() -> None:
    """message_delta's counts are cumulative: a Messages upstream that reports the input side as
    0 there (sglang, some proxies) has not un-read the prompt; billing it as 0 tokens is wrong."""
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 30,
        },
    }
    chunks = [c async for c in chat_chunks(each([STREAM_EVENTS[0], delta, {"type": "message_stop"}]))]
    assert usage_from(chunks[-1]) == Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000)


# --- whitespace-only stop sequences, which Messages refuses ------------------------------------


def _text_stream(pieces: list[str], then_a_call: bool = True) -> list[dict[str, Any]]:
    texts = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    call_blocks = [
        {"type": "content_block_start", "index": 1, "content_block": {**MESSAGE["content"][1], "input": {}}},  # type: ignore[index]
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 1},
    ]
    return [
        STREAM_EVENTS[0],
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *texts,
        {"type": "content_block_stop", "index": 0},
        *(call_blocks if then_a_call else []),
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if then_a_call else "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]


def test_whitespace_only_stop_sequences_are_not_sent() -> None:
    # Anthropic: 400 "stop_sequences: each stop sequence must contain non-whitespace".
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_to_messages({**ask, "stop": ["\n", "END", " \t", ""]})["stop_sequences"] == ["END"]
    assert "stop_sequences" not in chat_to_messages({**ask, "stop": "\n"})
    assert chat_to_messages({**ask, "stop": "\nUser:"})["stop_sequences"] == ["\nUser:"]


@pytest.mark.parametrize(
    ("pieces", "stops", "text", "matched"),
    [
        (["one", " line\nand", " more"], ("\n",), "one line", "\n"),
        (["a\n", "\nb"], ("\n\n",), "a", "\n\n"),  # a stop split between two pieces
        (["a\n", "b\n"], ("\n\n",), "a\nb\n", None),  # held back, then sent: no stop after all
        (["a \t", "\nb"], (" \t\n", "\t"), "a ", "\t"),  # the first to end is the one met
        (["\n", "x"], ("\n",), "", "\n"),
    ],
)
async def test_the_answer_ends_at_a_whitespace_stop_sequence_whole_or_streamed(
    pieces: list[str], stops: tuple[str, ...], text: str, matched: str | None
) -> None:
    chunks = [c async for c in chat_chunks(each(_text_stream(pieces)), stops)]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    streamed = "".join(ch["delta"].get("content") or "" for ch in choices)
    called = any(ch["delta"].get("tool_calls") for ch in choices)
    whole, usage = message_to_completion(
        {**MESSAGE, "content": [{"type": "text", "text": "".join(pieces)}, MESSAGE["content"][1]]},
        stops,  # type: ignore[index]
    )
    choice = whole["choices"][0]
    ChatCompletion.model_validate(whole)
    assert streamed == choice["message"]["content"] == text
    if matched is None:
        assert choice["finish_reason"] == choices[-1]["finish_reason"] == "tool_calls"
        assert called and "tool_calls" in choice["message"]
    else:
        # As an OpenAI model stops: nothing after the stop sequence, not the call either.
        assert choice["finish_reason"] == choices[-1]["finish_reason"] == "stop"
        assert choice["stop_reason"] == choices[-1]["stop_reason"] == matched
        assert not called and "tool_calls" not in choice["message"]
    # The upstream generated on, and bills it: the usage is its own.
    assert usage_from(chunks[-1]) == Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000)
    assert usage == usage_of_message(MESSAGE["usage"])


async def test_a_stream_stopped_at_whitespace_is_billed_all_the_upstream_generated(
    upstream: Upstream, provider: AnthropicProvider, pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply(events(*_text_stream(["Paris.\n", "It is the capital"], then_a_call=False)))
    chunks = [c async for c in provider.stream(call(stream=True, stop=["\n", "END"]))]
    assert upstream.seen[0][1]["stop_sequences"] == ["END"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Paris."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # not "length": it stopped first
    assert usage_from(chunks[-1]) == Usage(7012, 30, cache_read_tokens=5000, cache_write_tokens=2000)
    assert pool.in_use == 0


async def test_a_whole_answer_stopped_at_whitespace(upstream: Upstream, provider: AnthropicProvider) -> None:
    message = {**MESSAGE, "content": [{"type": "text", "text": "Paris.\nIt is"}], "stop_reason": "end_turn"}
    upstream.handler = json_reply(message)
    completion = await provider.complete(call(stop="\n"))
    assert "stop_sequences" not in upstream.seen[0][1]
    assert completion.body["choices"][0]["message"]["content"] == "Paris."
    assert completion.body["choices"][0]["stop_reason"] == "\n"
