"""The client-wire seam (server/client_wires.py): the chat wire writes exactly what it wrote
before the seam, and the Messages and Responses wires go through the same pipeline (the
in-process harness of tests/test_pipeline.py: a fake Provider, everything else real), with the
same stages, records and costs, their own answer, stream and error shapes, and the
Messages-only fields dropped for upstreams that cannot carry them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from faregate.catalog.models import Model, Offer
from faregate.config import ProviderSettings
from faregate.errors import (
    AuthenticationFailed,
    BreakersOpen,
    FaregateError,
    InsufficientCredits,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamFailed,
    UpstreamFailure,
)
from faregate.providers.anthropic import AnthropicProvider
from faregate.providers.registry import ProviderRegistry
from faregate.routing.candidate_fit import ModelUnavailable, Rejections, unavailable_headers
from faregate.routing.estimate import PromptSize
from faregate.routing.plan import Candidate, Plan
from faregate.routing.worst_case import worst_case
from faregate.server.client_wires import CHAT, MESSAGES, RESPONSES
from faregate.types import JSON, Attempt, ChatRequest, Price, Usage
from faregate.wire import anthropic_upstream, openai
from test_pipeline import ASK, WHOLE_STREAM, Harness, answer, harness

__all__ = ["harness"]  # the fixture, imported

CHEAP = Price(Decimal(1), Decimal(1))
MESSAGE = {"max_tokens": 100, "messages": [{"role": "user", "content": "What is 6 times 7?"}]}


def events(raw: bytes) -> list[JSON]:
    """The data of each `event:`-named SSE frame."""
    out = []
    for frame in raw.split(b"\n\n"):
        lines = frame.split(b"\n")
        if len(lines) == 2 and lines[0].startswith(b"event: "):
            data = orjson.loads(lines[1].removeprefix(b"data: "))
            assert data["type"] == lines[0].removeprefix(b"event: ").decode()
            out.append(data)
    return out


# -- the chat wire: the identity ------------------------------------------------------------------


def test_the_chat_wire_writes_what_the_chat_path_always_wrote() -> None:
    body = answer().body
    assert CHAT.to_chat(body) is body
    assert CHAT.answer(body, body) == orjson.dumps(body)
    encoder = CHAT.stream("cheap", True, body)
    chunk = {"id": "c", "model": "up", "choices": [], "usage": {"prompt_tokens": 1}}
    assert encoder.chunk(dict(chunk)) == openai.relay_frame(dict(chunk), "cheap", True)
    usage = openai.usage_chunk(None, "cheap", Usage(1, 2), Decimal("0.5"), Decimal("5"))
    assert encoder.close(usage) == openai.sse_frame(usage) + openai.DONE
    assert CHAT.stream("cheap", False, body).close(None) == openai.DONE
    failure = UpstreamFailure("truncated", "cut")
    assert encoder.fail(failure) == openai.error_event("cut", "stream_interrupted")
    error = InvalidRequest("bad", param="x")
    assert CHAT.error(error) == orjson.dumps(openai.error_body(error))


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (AuthenticationFailed("who?"), 401, "authentication_error"),
        (InsufficientCredits("no credit"), 402, "billing_error"),
        (PermissionDenied("no"), 403, "permission_error"),
        (ModelNotFound("no model"), 404, "not_found_error"),
        (PayloadTooLarge("too big"), 413, "request_too_large"),
        (RateLimited("slow down"), 429, "rate_limit_error"),
        (ServiceUnavailable("down"), 503, "overloaded_error"),
        (UpstreamFailed([]), 502, "api_error"),
    ],
)
def test_messages_errors_in_anthropics_shape(error: FaregateError, status: int, kind: str) -> None:
    assert error.status == status
    assert orjson.loads(MESSAGES.error(error)) == {
        "type": "error",
        "error": {"type": kind, "message": error.message},
    }
    # The Responses API answers errors as OpenAI does.
    assert RESPONSES.error(error) == CHAT.error(error)


def test_a_503_no_retry_fixes_is_no_overload_on_the_messages_wire() -> None:
    # A model no enabled provider sells stays so until the operator sets a key: the gateway says
    # so with x-should-retry: false, and a Messages client must not read it as "Overloaded".
    error = ModelUnavailable("No candidate can serve this.", headers=unavailable_headers(Rejections()))
    assert (error.status, error.headers) == (503, {"x-should-retry": "false"})
    assert MESSAGES.status(error) == 503
    assert orjson.loads(MESSAGES.error(error))["error"] == {"type": "api_error", "message": error.message}
    # A breaker open a moment is a 503 to retry after its Retry-After: overloaded_error still.
    breakers = BreakersOpen(["claude-sonnet-4-6 via anthropic"], wait=3.0)
    assert orjson.loads(MESSAGES.error(breakers))["error"]["type"] == "overloaded_error"


def overloaded_attempt(status: int | None, outcome: str | None = None) -> Attempt:
    # As the attempt loop records them: a 429 rate limit is "rate_limited", a 5xx "server_error".
    outcome = outcome or ("rate_limited" if status == 429 else "server_error")
    return Attempt("claude-sonnet-4-6", "anthropic", outcome, 5.0, status=status)


@pytest.mark.parametrize(
    ("statuses", "messages_status"),
    [
        ((529, 503, 429), 529),  # every upstream out of capacity: Anthropic's overloaded_error
        ((529,), 529),
        ((529, 500), 502),  # one failed otherwise: the attempts say nothing about load
        ((529, None), 502),  # a timeout
    ],
)
def test_a_messages_client_gets_overloaded_when_every_upstream_is(
    statuses: tuple[int | None, ...], messages_status: int
) -> None:
    error = UpstreamFailed([overloaded_attempt(s) for s in statuses])
    assert MESSAGES.status(error) == messages_status
    kind = "overloaded_error" if messages_status == 529 else "api_error"
    assert orjson.loads(MESSAGES.error(error))["error"] == {"type": kind, "message": error.message}
    # OpenAI's wires keep the 502 that lists the attempts.
    assert CHAT.status(error) == RESPONSES.status(error) == 502
    timed_out = UpstreamFailed([overloaded_attempt(529)], timeout=True)
    assert MESSAGES.status(timed_out) == 504


def test_an_account_out_of_quota_is_no_overload() -> None:
    # OpenAI's 429 insufficient_quota is the provider's failure but no rate limit (a server_error):
    # our account needs payment, which Anthropic's overloaded_error would hide.
    error = UpstreamFailed([overloaded_attempt(529), overloaded_attempt(429, "server_error")])
    assert MESSAGES.status(error) == 502


def failed(outcome: str, status: int | None) -> Attempt:
    return Attempt("m", "p", outcome, 10.0, status=status)


@pytest.mark.parametrize(
    ("attempts", "settled"),
    [
        ([failed("server_error", 401), failed("server_error", 403)], True),  # our keys refused
        ([failed("server_error", 404)], True),  # a model or path the provider does not serve
        ([failed("server_error", 402), failed("server_error", 429)], True),  # accounts need payment
        ([failed("server_error", 307)], True),  # a wrong base_url
        ([failed("escalated", 200), failed("server_error", 401)], True),  # a cascade's refused step
        ([failed("server_error", 401), failed("server_error", 500)], False),  # a 500 may pass
        ([failed("rate_limited", 429)], False),
        ([failed("server_error", 409)], False),  # a lock timeout: try again
        ([failed("server_error", 401), failed("timeout", None)], False),
        ([failed("connection", None)], False),
        ([], False),
    ],
)
def test_a_failure_no_retry_can_fix_tells_the_sdks_not_to_retry(
    attempts: list[Attempt], settled: bool
) -> None:
    # The openai and anthropic SDKs retry every 5xx unless `x-should-retry: false`.
    error = UpstreamFailed(attempts)
    assert error.settled is settled
    assert error.headers.get("x-should-retry") == ("false" if settled else None)


def test_without_fields_drops_nested_marks_and_changes_nothing_shared() -> None:
    mark = {"type": "ephemeral"}
    body: JSON = {
        "model": "m",
        "top_k": 5,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": mark}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "cache_control": mark}]},
            {"role": "user", "content": "plain"},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": mark}],
    }
    before = orjson.dumps(body)
    out = openai.without_fields(body, frozenset({"top_k", "cache_control"}))
    assert b"cache_control" not in orjson.dumps(out) and "top_k" not in out
    assert out["messages"][2] == {"role": "user", "content": "plain"}
    assert orjson.dumps(body) == before, "the client's body is left as it was"
    assert openai.without_fields(body, frozenset()) is body


async def test_the_worst_case_holds_every_prompt_token_at_the_dearest_input_price() -> None:
    """A prompt-cache write (2x input for one hour here) may cost more than plain input."""
    price = Price(Decimal(1), Decimal(5), Decimal("0.1"), Decimal("1.25"), Decimal(2))
    model = Model("claude", price, 200_000, 10, frozenset({"text"}))
    candidate = Candidate(model, Offer("claude", "p", "claude", price, True))
    body: JSON = {"messages": [{"role": "user", "content": "a prompt of some length " * 20}]}
    request = ChatRequest("r", body, "claude", False, False, 10, frozenset())
    plan = Plan(route="claude", candidates=[candidate], prompt=PromptSize.of(body))
    worst, tokens = await worst_case(plan, request)
    prompt = tokens - 10
    assert prompt > 100
    assert worst == (Decimal(prompt) * 2 + Decimal(10) * 5) / Decimal(1_000_000)
    assert worst > price.cost(Usage(prompt, 10))


# -- Anthropic Messages through the pipeline ------------------------------------------------------


async def test_a_message_passes_the_same_stages_and_is_recorded_with_its_wire(harness: Harness) -> None:
    status, headers, raw = await harness.post({"model": "cheap", **MESSAGE}, path="/v1/messages")
    assert status == 200
    body = orjson.loads(raw)
    cost = CHEAP.cost(Usage(10, 2))
    assert body["type"] == "message" and body["model"] == "cheap"
    assert body["content"] == [{"type": "text", "text": "42"}] and body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] == 10 and body["usage"]["cost"] == float(cost)
    assert headers["x-faregate-cost-usd"] == "0.000012"
    assert harness.events == [
        "authenticate",
        "cache lookup",
        "plan",
        "reserve",
        "upstream a",
        f"settle {cost} 12",
        "record",
    ]
    (record,) = harness.records
    assert (record.wire, record.status, record.cost_usd, record.model_requested) == (
        "messages",
        200,
        cost,
        "cheap",
    )
    sent = harness.a.calls[0].body
    assert (
        sent["messages"] == [{"role": "user", "content": "What is 6 times 7?"}] and sent["max_tokens"] == 100
    )


async def test_every_wire_sends_the_limit_where_the_provider_reads_it(harness: Harness) -> None:
    # OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...) refuse max_tokens: a Messages or
    # Responses request, translated with its limit as max_tokens, was a 400 on every such
    # offer. A provider that reads max_completion_tokens gets the limit there, from every wire.
    reads = ProviderSettings(base_url="http://127.0.0.1", output_limit_field="max_completion_tokens")
    harness.pipeline.runner.providers = ProviderRegistry.of({"a": harness.a, "b": harness.b}, reads)
    asked: list[tuple[str, JSON]] = [
        ("/v1/messages", MESSAGE),
        ("/v1/responses", {"input": "What is 6 times 7?", "max_output_tokens": 100}),
        ("/v1/chat/completions", {**ASK, "max_tokens": 100}),
        ("/v1/chat/completions", {**ASK, "max_tokens": 4000, "max_completion_tokens": 100}),
    ]
    for path, body in asked:
        status, _, _ = await harness.post({"model": "cheap", **body}, path=path)
        assert status == 200, path
        sent = harness.a.calls[-1].body
        assert "max_tokens" not in sent and sent["max_completion_tokens"] == 100, (path, sent)


async def test_the_key_may_come_in_x_api_key(harness: Harness) -> None:
    status, _, _ = await harness.post(
        {"model": "cheap", **MESSAGE}, path="/v1/messages", headers={"x-api-key": "fg-test-key"}
    )
    assert status == 200
    status, _, raw = await harness.post({"model": "cheap", **MESSAGE}, path="/v1/messages", headers={})
    assert status == 401
    assert orjson.loads(raw)["error"]["type"] == "authentication_error"
    assert harness.records[-1].wire == "messages" and harness.records[-1].status == 401


async def test_what_messages_cannot_translate_is_a_400_in_its_shape(harness: Harness) -> None:
    status, _, raw = await harness.post(
        {"model": "cheap", "thinking": {"type": "enabled", "budget_tokens": 10}, **MESSAGE},
        path="/v1/messages",
    )
    assert status == 400
    error = orjson.loads(raw)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "thinking" in error["error"]["message"]
    assert harness.records[-1].status == 400 and harness.a.calls == []


async def test_top_k_and_cache_marks_reach_only_a_provider_that_carries_them(harness: Harness) -> None:
    marked = {
        "model": "cheap",
        "top_k": 3,
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        **MESSAGE,
    }
    await harness.post(marked, path="/v1/messages")
    sent = harness.a.calls[-1].body
    assert "top_k" not in sent and b"cache_control" not in orjson.dumps(sent)
    harness.a.carries = frozenset({"top_k", "cache_control"})  # as the Anthropic provider
    await harness.post(marked, path="/v1/messages")
    sent = harness.a.calls[-1].body
    assert sent["top_k"] == 3 and sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    # A chat request's own fields pass through as the client sent them.
    await harness.post({"model": "cheap", "top_k": 3, **ASK})
    assert harness.a.calls[-1].body["top_k"] == 3


async def test_an_effort_only_messages_has_is_the_nearest_a_chat_upstream_takes(harness: Harness) -> None:
    """Anthropic's output_config.effort "max" went to every upstream as reasoning_effort "max",
    which OpenAI's wire refuses (400): a chat upstream gets "high", the most it takes, and a
    Messages upstream still gets "max"."""
    ask = {"model": "cheap", "output_config": {"effort": "max"}, **MESSAGE}
    await harness.post({**ask, "output_config": {"effort": "medium"}}, path="/v1/messages")
    medium = harness.a.calls[-1].body
    status, _, _ = await harness.post(ask, path="/v1/messages")
    sent = harness.a.calls[-1].body
    assert status == 200 and sent == {**medium, "reasoning_effort": "high"}, "nothing else is sent"
    harness.a.carries = AnthropicProvider.carries
    messages = anthropic_upstream.chat_to_messages
    await harness.post(ask, path="/v1/messages")
    assert messages(harness.a.calls[-1].body)["output_config"] == {"effort": "max"}
    # An effort both wires have is passed as it came.
    await harness.post({**ask, "output_config": {"effort": "medium"}}, path="/v1/messages")
    assert messages(harness.a.calls[-1].body)["output_config"] == {"effort": "medium"}
    assert len(harness.a.calls) == 4, "each reached the upstream"


async def test_a_message_at_an_effort_the_chat_wire_lacks_is_cached(harness: Harness) -> None:
    ask = {"model": "cheap", "temperature": 0, "output_config": {"effort": "max"}, **MESSAGE}
    await harness.post(ask, path="/v1/messages")
    await harness.cached()
    status, headers, _ = await harness.post(ask, path="/v1/messages")
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    # Not the answer to one asked at the nearest effort the chat wire has.
    status, headers, _ = await harness.post({**ask, "output_config": {"effort": "high"}}, path="/v1/messages")
    assert status == 200 and headers["x-faregate-cache"] != "hit"


async def test_a_chat_client_cannot_send_the_responses_wires_own_body(harness: Harness) -> None:
    """`responses_request` is the Responses wire's extra (the client's body for a provider that
    speaks that API): sent by a chat client it reached such a provider, which posted it as the
    request instead of the chat body the hold was reserved for (any max_output_tokens, tools...)."""
    harness.a.carries = frozenset({"responses_request"})  # as the OpenAI Responses provider
    native = {"model": "cheap", "input": "Write a novel.", "max_output_tokens": 100_000}
    asked = {"model": "cheap", "max_tokens": 1, "responses_request": native, **ASK}
    status, _, raw = await harness.post(asked)
    assert status == 400 and "responses_request" in orjson.loads(raw)["error"]["message"]
    assert harness.a.calls == [] and harness.records[-1].status == 400


async def test_a_kept_answer_stopped_at_a_stop_sequence_says_so_when_replayed_as_a_stream(
    harness: Harness,
) -> None:
    """The upstream names the stop string it matched (the choice's `stop_reason`, as vLLM and our
    Anthropic provider do); a Messages client is told `stop_sequence` and which one. Served again
    from the cache as a stream, the replay dropped it: `end_turn`, no sequence."""
    stopped = answer("6 times 7 is 42")
    stopped.body["choices"][0]["stop_reason"] = "END"
    harness.a.outcomes = [stopped]
    ask = {"model": "cheap", "temperature": 0, "stop_sequences": ["END"], **MESSAGE}
    status, headers, raw = await harness.post(ask, path="/v1/messages")
    said = orjson.loads(raw)
    assert status == 200 and (said["stop_reason"], said["stop_sequence"]) == ("stop_sequence", "END")
    await harness.cached()
    status, headers, raw = await harness.post({**ask, "stream": True}, path="/v1/messages")
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    (delta,) = [e["delta"] for e in events(raw) if e["type"] == "message_delta"]
    assert (delta["stop_reason"], delta["stop_sequence"]) == ("stop_sequence", "END")


async def test_a_kept_stream_stopped_at_a_stop_sequence_says_so_when_served_whole(
    harness: Harness,
) -> None:
    """The other way: a stream that stopped at a stop string is kept by the cache; a whole answer
    served from it was `end_turn` with no sequence."""
    finish = {**WHOLE_STREAM[3], "choices": [{**WHOLE_STREAM[3]["choices"][0], "stop_reason": "END"}]}
    harness.a.outcomes = [[*WHOLE_STREAM[:3], finish, WHOLE_STREAM[4]]]
    ask = {"model": "cheap", "temperature": 0, "stop_sequences": ["END"], **MESSAGE}
    status, _, raw = await harness.post({**ask, "stream": True}, path="/v1/messages")
    (delta,) = [e["delta"] for e in events(raw) if e["type"] == "message_delta"]
    assert status == 200 and (delta["stop_reason"], delta["stop_sequence"]) == ("stop_sequence", "END")
    await harness.cached()
    status, headers, raw = await harness.post(ask, path="/v1/messages")
    said = orjson.loads(raw)
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    assert (said["stop_reason"], said["stop_sequence"]) == ("stop_sequence", "END")


async def test_a_messages_stream_with_its_cost_and_a_fallback_before_content(harness: Harness) -> None:
    harness.a.outcomes = [[UpstreamFailure("rate_limited", "HTTP 429")]]
    status, headers, raw = await harness.post(
        {"model": "pair", "stream": True, **MESSAGE}, path="/v1/messages"
    )
    assert status == 200 and headers["x-faregate-provider"] == "b"
    sent = events(raw)
    kinds = [e["type"] for e in sent]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(e["delta"]["text"] for e in sent if e["type"] == "content_block_delta") == "42"
    cost = Price(Decimal(10), Decimal(10)).cost(Usage(10, 2))
    assert sent[-2]["usage"]["cost"] == float(cost) and sent[-2]["delta"]["stop_reason"] == "end_turn"
    (record,) = harness.records
    assert record.wire == "messages" and record.stream and record.cost_usd == cost
    assert [a.outcome for a in record.attempts] == ["rate_limited", "ok"]


async def test_a_messages_stream_cut_after_content_ends_with_an_error_event(harness: Harness) -> None:
    harness.a.outcomes = [WHOLE_STREAM[:2]]
    status, _, raw = await harness.post({"model": "cheap", "stream": True, **MESSAGE}, path="/v1/messages")
    assert status == 200
    sent = events(raw)
    assert sent[-1]["type"] == "error" and "failed after content was sent" in sent[-1]["error"]["message"]
    assert "message_stop" not in [e["type"] for e in sent]
    assert harness.records[0].status == 502


async def test_a_cache_hit_and_a_judged_cascade_step_are_replayed_as_messages_streams(
    harness: Harness,
) -> None:
    ask = {"model": "cheap", "temperature": 0, **MESSAGE}
    await harness.post(ask, path="/v1/messages")
    await harness.cached()
    status, headers, raw = await harness.post({**ask, "stream": True}, path="/v1/messages")
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    sent = events(raw)
    assert sent[-1]["type"] == "message_stop" and sent[-2]["usage"]["cost"] == 0
    harness.a.outcomes = [answer("6 times 7 is 42. The answer is 42")]
    status, headers, raw = await harness.post(
        {"model": "cascade", "stream": True, **MESSAGE}, path="/v1/messages"
    )
    assert headers["x-faregate-cascade"] == "accepted; escalations=0"
    sent = events(raw)
    assert sent[-2]["delta"]["stop_reason"] == "end_turn" and sent[-1]["type"] == "message_stop"


async def test_count_tokens(harness: Harness) -> None:
    response = await harness.client.post(
        "/v1/messages/count_tokens",
        data=orjson.dumps({"model": "cheap", "messages": MESSAGE["messages"]}),
        headers={"x-api-key": "fg-test-key", "anthropic-version": "2023-06-01"},
    )
    assert response.status == 200
    assert (await response.json())["input_tokens"] > 0
    response = await harness.client.post("/v1/messages/count_tokens", data=b"{}")
    assert response.status == 401 and (await response.json())["error"]["type"] == "authentication_error"


async def test_count_tokens_for_a_model_the_gateway_does_not_know_is_a_404(harness: Harness) -> None:
    # As Anthropic answers it, and as /v1/messages would: a typo is told, not counted.
    headers = {"x-api-key": "fg-test-key", "anthropic-version": "2023-06-01"}
    for name, status in (("chaep", 404), ("cascade", 200)):
        body = {"model": name, "messages": MESSAGE["messages"]}
        response = await harness.client.post(
            "/v1/messages/count_tokens", data=orjson.dumps(body), headers=headers
        )
        assert response.status == status, name
    error = await harness.client.post(
        "/v1/messages/count_tokens", data=orjson.dumps({**body, "model": "chaep"}), headers=headers
    )
    assert (await error.json())["error"] == {
        "type": "not_found_error",
        "message": "The model 'chaep' does not exist. Did you mean: cheap?",
    }


# -- the Responses API through the pipeline -------------------------------------------------------


async def test_a_response_whole_and_streamed(harness: Harness) -> None:
    asked: dict[str, Any] = {"model": "cheap", "input": "What is 6 times 7?", "instructions": "Be brief."}
    status, _, raw = await harness.post(asked, path="/v1/responses")
    body = orjson.loads(raw)
    assert status == 200 and body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "42" and body["instructions"] == "Be brief."
    assert body["usage"]["cost"] == float(CHEAP.cost(Usage(10, 2)))
    assert harness.records[-1].wire == "responses"
    status, _, raw = await harness.post({**asked, "stream": True}, path="/v1/responses")
    sent = events(raw)
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    assert sent[-1]["type"] == "response.completed"
    assert sent[-1]["response"]["usage"]["cost"] == float(CHEAP.cost(Usage(10, 2)))


async def test_a_response_stream_cut_after_content_fails_and_state_is_refused(harness: Harness) -> None:
    harness.a.outcomes = [WHOLE_STREAM[:2]]
    _, _, raw = await harness.post({"model": "cheap", "input": "hi", "stream": True}, path="/v1/responses")
    assert events(raw)[-1]["type"] == "response.failed"
    status, _, raw = await harness.post(
        {"model": "cheap", "input": "hi", "previous_response_id": "resp_1"}, path="/v1/responses"
    )
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "previous_response_id"
    response = await harness.client.get(
        "/v1/responses/resp_1", headers={"Authorization": "Bearer fg-test-key"}
    )
    assert response.status == 404


def test_every_encoders_frames_are_its_chunks_joined() -> None:
    """`frames` (one write per upstream read) gives exactly the bytes of `chunk` one at a time."""
    import copy

    from faregate.server.client_wires import CHAT, MESSAGES, RESPONSES

    read = [
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hé"}, "finish_reason": None}],
         "usage": None},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
         "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
    ]  # fmt: skip
    for wire in (CHAT, MESSAGES, RESPONSES):
        for include_usage in (True, False):
            one, joined = wire.stream("m", include_usage, {}), wire.stream("m", include_usage, {})
            expected = b"".join(one.chunk(chunk) for chunk in copy.deepcopy(read))
            assert joined.frames(copy.deepcopy(read)) == expected, (wire.name, include_usage)
            assert expected
