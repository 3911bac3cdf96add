"""A Responses request passed through natively to a provider with `responses: true`
(providers/openai_responses.py, wire/responses_native.py): the provider over the production
connection pool against an in-process upstream (the transport seam), and the client wire that
sends the upstream's Response and events as they came, priced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faregate.catalog.models import Offer
from faregate.config import ProviderSettings
from faregate.errors import ConfigError, InvalidRequest, UpstreamFailure
from faregate.providers.base import UpstreamCall
from faregate.providers.http import ConnectionPool
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.providers.openai_responses import OpenAIResponsesProvider
from faregate.providers.registry import _build, make_upstream_pool
from faregate.server.client_wires import CHAT, RESPONSES
from faregate.server.parse import parse_chat_request
from faregate.types import Price, Usage
from faregate.wire.openai import price_answer, usage_chunk, without_fields
from faregate.wire.responses_native import NATIVE_ANSWER, NATIVE_EVENTS, NATIVE_REQUEST, native_body
from faregate.wire.responses_stream import response_events, sse_frame

ASKED = {
    "model": "gpt-4o-mini",
    "instructions": "Be brief.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "metadata": {"team": "a"},
    "store": True,
    "faregate": {"tier": "cheap"},
}
RESPONSE = {
    "id": "resp_upstream1",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "gpt-4o-mini-2024-07-18",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"},
    ],
    "usage": {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    },
    "metadata": {"team": "a"},
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    url: str = ""
    handler: Handler | None = None
    seen: list[tuple[str, Any]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        state.seen.append((request.path, orjson.loads(await request.read())))
        assert state.handler is not None
        return await state.handler(request)

    app = web.Application()
    app.router.add_post("/v1/responses", dispatch)
    app.router.add_post("/v1/chat/completions", dispatch)
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
def provider(upstream: Upstream, pool: ConnectionPool) -> OpenAIResponsesProvider:
    return OpenAIResponsesProvider("openai", ProviderSettings(base_url=upstream.url, responses=True), pool)


def call(body: dict[str, Any], stream: bool = False) -> UpstreamCall:
    offer = Offer("gpt-4o-mini", "openai", "gpt-4o-mini-upstream", Price(Decimal(1), Decimal(2)), True)
    # As the attempt loop sends it: the upstream model name in the internal chat body.
    return UpstreamCall(offer, {**body, "model": "gpt-4o-mini-upstream"}, stream, 5.0, 5.0)


def test_the_registry_builds_it_by_configuration(pool: ConnectionPool) -> None:
    native = _build("openai", ProviderSettings(base_url="http://127.0.0.1/v1", responses=True), pool)
    plain = _build("deepseek", ProviderSettings(base_url="http://127.0.0.1/v1"), pool)
    assert isinstance(native, OpenAIResponsesProvider) and NATIVE_REQUEST in native.carries
    assert type(plain) is OpenAICompatibleProvider and NATIVE_REQUEST not in plain.carries
    with pytest.raises(ConfigError, match="needs protocol openai"):
        _build("a", ProviderSettings(base_url="http://x/v1", protocol="anthropic", responses=True), pool)


def test_only_a_provider_that_speaks_it_receives_the_clients_body() -> None:
    chat = RESPONSES.to_chat(ASKED)
    assert chat[NATIVE_REQUEST] is ASKED and chat["messages"][0] == {"role": "system", "content": "Be brief."}
    # What the attempt loop sends a provider without the Responses API: the translation only.
    sent = without_fields(chat, RESPONSES.extras - OpenAICompatibleProvider.carries)
    assert NATIVE_REQUEST not in sent and sent["messages"] == chat["messages"]
    assert not RESPONSES.extras - OpenAIResponsesProvider.carries


async def test_a_whole_response_is_passed_through_and_priced(
    upstream: Upstream, provider: OpenAIResponsesProvider
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(RESPONSE)

    upstream.handler = answer
    completion = await provider.complete(call(RESPONSES.to_chat(ASKED)))
    path, sent = upstream.seen[-1]
    assert path == "/v1/responses"
    # The client's own body, with the upstream's model name, nothing stored, no gateway fields.
    expected = {k: v for k, v in ASKED.items() if k != "faregate"}
    assert sent == {**expected, "model": "gpt-4o-mini-upstream", "store": False}
    assert completion.usage == Usage(12, 5, cache_read_tokens=4)
    message = completion.body["choices"][0]["message"]
    assert message["content"] == "Hello." and message["tool_calls"][0]["id"] == "call_1"
    assert completion.body["choices"][0]["finish_reason"] == "tool_calls"
    # The pipeline prices the internal answer; the client receives the upstream's Response.
    body = price_answer(
        completion.body, "gpt-4o-mini", completion.usage, Decimal("0.000021"), Decimal("0.0001")
    )
    out = orjson.loads(RESPONSES.answer(body, ASKED))
    priced = {**RESPONSE["usage"], "cost": 0.000021, "baseline_cost": 0.0001}
    assert out == {**RESPONSE, "model": "gpt-4o-mini", "usage": priced}


async def test_a_chat_request_still_goes_to_chat_completions(
    upstream: Upstream, provider: OpenAIResponsesProvider
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        body = {"id": "c1", "object": "chat.completion", "choices": [choice], "usage": usage}
        return web.json_response(body)

    upstream.handler = answer
    completion = await provider.complete(call({"messages": [{"role": "user", "content": "hi"}]}))
    assert upstream.seen[-1][0] == "/v1/chat/completions" and NATIVE_ANSWER not in completion.body
    assert CHAT.answer(completion.body, {}) == orjson.dumps(completion.body)


async def upstream_events(text: str) -> list[dict[str, Any]]:
    """A real Response event stream (the simulator's own translation of chat chunks)."""

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield {"id": "chatcmpl-up", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        for word in text.split(" "):
            yield {"id": "chatcmpl-up", "choices": [{"index": 0, "delta": {"content": word + " "}}]}
        yield {"id": "chatcmpl-up", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {"id": "chatcmpl-up", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}

    return [e async for e in response_events(chunks(), model="gpt-4o-mini-upstream", request=ASKED)]


def serve_events(events: list[dict[str, Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(sse_frame(event))
        await response.write_eof()
        return response

    return handler


async def test_a_stream_is_relayed_event_by_event_with_the_cost_at_the_end(
    upstream: Upstream, provider: OpenAIResponsesProvider
) -> None:
    events = await upstream_events("one two three")
    upstream.handler = serve_events(events)
    chunks = [c async for c in provider.stream(call(RESPONSES.to_chat({**ASKED, "stream": True}), True))]
    assert upstream.seen[-1][1]["stream"] is True and upstream.seen[-1][1]["store"] is False
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "one two three "
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    encoder = RESPONSES.stream("gpt-4o-mini", True, ASKED)
    sent = b"".join(encoder.chunk(c) for c in chunks)
    final = usage_chunk(None, "gpt-4o-mini", Usage(9, 3), Decimal("0.00002"), Decimal("0.00009"))
    sent += encoder.close(final)
    relayed = [orjson.loads(line[6:]) for line in sent.split(b"\n") if line.startswith(b"data: ")]
    # Every upstream event, in order and numbered as it came; the gateway's model name, the cost.
    assert [(e["type"], e["sequence_number"]) for e in relayed] == [
        (e["type"], e["sequence_number"]) for e in events
    ]
    assert [e for e in relayed if "response" not in e] == [e for e in events if "response" not in e]
    assert relayed[-1]["response"]["model"] == "gpt-4o-mini"
    priced = {**events[-1]["response"]["usage"], "cost": 0.00002, "baseline_cost": 0.00009}
    assert relayed[-1]["response"]["usage"] == priced
    assert relayed[-1]["response"]["id"] == events[-1]["response"]["id"]


async def test_a_failure_after_the_start_ends_with_response_failed(
    upstream: Upstream, provider: OpenAIResponsesProvider
) -> None:
    events = await upstream_events("one two")
    failed = {"type": "error", "sequence_number": 99, "code": "server_error", "message": "boom"}
    upstream.handler = serve_events([*events[:5], failed])
    encoder = RESPONSES.stream("gpt-4o-mini", True, ASKED)
    sent = b""
    with pytest.raises(UpstreamFailure, match="boom") as raised:
        async for chunk in provider.stream(call(RESPONSES.to_chat({**ASKED, "stream": True}), True)):
            sent += encoder.chunk(chunk)
    sent += encoder.fail(raised.value)
    relayed = [orjson.loads(line[6:]) for line in sent.split(b"\n") if line.startswith(b"data: ")]
    assert [e["sequence_number"] for e in relayed] == list(range(len(relayed)))
    assert relayed[-1]["type"] == "response.failed" and relayed[-1]["response"]["status"] == "failed"
    assert relayed[-1]["response"]["id"] == events[0]["response"]["id"]


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [("rate_limit_exceeded", "rate_limited", 429), ("server_is_overloaded", "server_error", 503)],
)
async def test_an_error_event_is_the_failure_its_code_names(
    upstream: Upstream, provider: OpenAIResponsesProvider, code: str, kind: str, status: int
) -> None:
    # The head said 200; the event's code says a rate limit, or an overload: the retry, the
    # capacity checks (a Retry-After, a Messages client's 529) and the record count it as one.
    events = await upstream_events("one two")
    failed = {"type": "error", "sequence_number": 2, "code": code, "message": "try again later"}
    upstream.handler = serve_events([*events[:2], failed])
    with pytest.raises(UpstreamFailure, match="try again later") as raised:
        async for _ in provider.stream(call(RESPONSES.to_chat({**ASKED, "stream": True}), True)):
            pass
    assert (raised.value.kind, raised.value.status) == (kind, status)


def test_an_internal_chunk_carries_its_event() -> None:
    chunk = {"choices": [], NATIVE_EVENTS: [{"type": "response.in_progress", "sequence_number": 1}]}
    assert RESPONSES.stream("m", True, {}).chunk(chunk) == (
        b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":1}\n\n'
    )


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ({"output": 7}, "output is not a list"),
        ({"output": [{"type": "message", "content": 7}]}, "output item 0's content is not a list"),
        (
            {"status": "incomplete", "incomplete_details": "max_output_tokens"},
            "incomplete_details is not an object",
        ),
    ],
)
async def test_a_response_that_cannot_be_read_is_a_bad_response(
    upstream: Upstream, provider: OpenAIResponsesProvider, shape: dict[str, Any], why: str
) -> None:
    # Any OpenAI-wire server may be given `responses: true`; a Response in another shape is one to
    # fall back from, as an unreadable chat completion is, not a crash of the request.
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({**RESPONSE, **shape})

    upstream.handler = answer
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(call(RESPONSES.to_chat(ASKED)))
    assert (info.value.kind, info.value.detail) == ("bad_response", f"response body: {why}")


@pytest.mark.parametrize(
    ("event", "why"),
    [
        ({"type": "response.completed", "response": "done"}, "response is not an object"),
        ({"type": "response.failed", "response": ["boom"]}, "response is not an object"),
        (
            {"type": "response.incomplete", "response": {"status": "incomplete", "incomplete_details": 1}},
            "response's incomplete_details is not an object",
        ),
    ],
)
async def test_a_stream_event_that_cannot_be_read_is_a_bad_response(
    upstream: Upstream, provider: OpenAIResponsesProvider, event: dict[str, Any], why: str
) -> None:
    events = await upstream_events("one two")
    upstream.handler = serve_events([*events[:5], {**event, "sequence_number": 5}])
    with pytest.raises(UpstreamFailure) as info:
        async for _ in provider.stream(call(RESPONSES.to_chat({**ASKED, "stream": True}), True)):
            pass
    assert (info.value.kind, info.value.detail) == ("bad_response", f"{event['type']} event: {why}")


async def test_reasoning_items_that_only_name_a_stored_item_are_not_sent_without_store(
    upstream: Upstream, provider: OpenAIResponsesProvider
) -> None:
    # The SDK's usual next turn, `input += response.output`, after a reasoning model answered:
    # the reasoning item names a stored item by id only. Sent with `store: false`, OpenAI answers
    # 404 "Item with id 'rs_...' not found. Items are not persisted when `store` is set to false";
    # one with its encrypted_content (include: ["reasoning.encrypted_content"]) is self-contained.
    bare = {"type": "reasoning", "id": "rs_1", "summary": []}
    encrypted = {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA"}
    call_item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "ok"}
    asked = {
        **{k: v for k, v in ASKED.items() if k != "store"},  # OpenAI's default: stored
        "include": ["reasoning.encrypted_content"],
        "input": [*ASKED["input"], bare, call_item, output, encrypted, *RESPONSE["output"][:1]],
    }

    async def like_openai(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for item in body["input"]:
            if item.get("type") == "reasoning" and not item.get("encrypted_content") and not body["store"]:
                message = f"Item with id '{item['id']}' not found. Items are not persisted (store false)."
                error = {"message": message, "type": "invalid_request_error", "param": "input", "code": None}
                return web.json_response({"error": error}, status=404)
        return web.json_response(RESPONSE)

    upstream.handler = like_openai
    completion = await provider.complete(call(RESPONSES.to_chat(asked)))
    assert completion.body["choices"][0]["message"]["content"] == "Hello."
    sent = upstream.seen[-1][1]
    assert sent["input"] == [*ASKED["input"], call_item, output, encrypted, *RESPONSE["output"][:1]]


@pytest.mark.parametrize(
    ("asked", "include"),
    [
        ({"reasoning": {"effort": "high"}}, ["reasoning.encrypted_content"]),
        ({"reasoning": {"summary": "auto"}, "store": True}, ["reasoning.encrypted_content"]),
        (
            {"reasoning": {"effort": "low"}, "include": ["message.output_text.logprobs"]},
            ["message.output_text.logprobs", "reasoning.encrypted_content"],
        ),
        (
            {"reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"]},
            ["reasoning.encrypted_content"],
        ),
        ({"reasoning": {"effort": "low"}, "store": False}, None),  # the client chose stateless
        ({}, None),  # no reasoning asked: a model without it refuses the include
        ({"reasoning": None}, None),
    ],
)
def test_a_reasoning_request_not_stored_asks_for_its_reasoning_back(
    asked: dict[str, Any], include: list[str] | None
) -> None:
    """The gateway sends `store: false` where the client sent (or defaulted to) true: a reasoning
    model's reasoning items then name items never stored, and were dropped from the next turn, the
    model reasoning afresh. Asked back encrypted (OpenAI's way for stateless requests), they come in
    the answer and go along in the next turn's `input += response.output`, as with store true."""
    unstored = {k: v for k, v in ASKED.items() if k != "store"}  # OpenAI's default: stored
    body = RESPONSES.to_chat({**unstored, **asked})
    sent = native_body({**body, "model": "o4-mini"}, stream=False)
    assert sent["store"] is False
    assert sent.get("include") == include


@pytest.mark.parametrize(
    "settings",
    [
        {"tool_choice": "auto"},
        {"tool_choice": "none"},
        {"tools": [], "tool_choice": "none", "parallel_tool_calls": False},
    ],
)
def test_tool_settings_without_tools_are_sent_on_neither_path(settings: dict[str, Any]) -> None:
    """Frameworks send them on every request; with no tool to call they say nothing, and the
    translated path leaves them out (OpenAI refuses some without tools, other servers more)."""
    body = parse_chat_request(RESPONSES.to_chat({**ASKED, **settings}), {}, "r").body
    assert not set(settings) & set(without_fields(body, frozenset({NATIVE_REQUEST})))
    assert not set(settings) & set(native_body({**body, "model": "gpt-4o-mini"}, stream=False))


def test_tool_settings_with_tools_are_passed_through() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    settings = {"tools": [tool], "tool_choice": "required", "parallel_tool_calls": False}
    body = parse_chat_request(RESPONSES.to_chat({**ASKED, **settings}), {}, "r").body
    sent = native_body({**body, "model": "gpt-4o-mini"}, stream=False)
    assert {name: sent[name] for name in settings} == settings


def test_a_forced_tool_choice_without_tools_is_refused_on_either_path() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(RESPONSES.to_chat({**ASKED, "tool_choice": "required"}), {}, "r")
    assert info.value.param == "tool_choice"
