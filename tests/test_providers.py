"""The OpenAI-compatible provider and the registry, against a real HTTP server on 127.0.0.1.

Only the transport seam is scripted: each test installs a handler on a live aiohttp
server, and the provider talks to it over TCP with the production connection pool.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faregate.catalog.models import Offer
from faregate.config import ProviderSettings, parse_settings
from faregate.errors import ConfigError, UpstreamFailure, UpstreamRejected
from faregate.providers.base import UpstreamCall
from faregate.providers.http import ConnectionPool
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.providers.registry import ProviderRegistry, make_upstream_pool, pool_limits, with_simulator
from faregate.providers.upstream_failures import (
    go_duration,
    json_instead_of_stream,
    overflows_context,
    parse_retry_after,
)
from faregate.types import Price, Usage
from faregate.wire.openai import answer_is_empty, usage_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEY_ENV = "FAREGATE_TEST_PROVIDER_KEY"

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
}


@dataclass
class Seen:
    headers: Mapping[str, str]
    body: Any
    peer_port: int


@dataclass
class Upstream:
    url: str
    handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    # Set at teardown so handlers that wait forever let the server close.
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream(url="")

    async def dispatch(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.seen.append(
            Seen(request.headers.copy(), orjson.loads(await request.read()), peer[1] if peer else 0)
        )
        assert state.handler is not None
        return await state.handler(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", dispatch)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/v1"))
    yield state
    state.release.set()
    await server.close()


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    pool = make_upstream_pool()
    yield pool
    await pool.close()


@pytest.fixture
def make_provider(
    upstream: Upstream, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., OpenAICompatibleProvider]:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")

    def build(**settings: Any) -> OpenAICompatibleProvider:
        config = ProviderSettings(**{"base_url": upstream.url, "api_key_env": KEY_ENV, **settings})
        return OpenAICompatibleProvider("siliconflow", config, pool)

    return build


def call(
    *,
    stream: bool = False,
    first_byte: float = 5.0,
    total: float = 5.0,
    headers: dict[str, str] | None = None,
    idle: float | None = None,
) -> UpstreamCall:
    offer = Offer("m", "siliconflow", "up-m", Price(Decimal(1), Decimal(2)), True)
    body: dict[str, Any] = {"model": "up-m", "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return UpstreamCall(
        offer, body, stream, first_byte, total, headers=headers or {}, stream_idle_timeout_s=idle
    )


def acquired(pool: ConnectionPool) -> int:
    return pool.in_use


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
        )

    return handler


def sse_reply(
    parts: list[bytes], *, delay: float = 0.0, then: str = "end", hang_until: asyncio.Event | None = None
) -> Handler:
    """Send `parts` as a chunked event stream, then end it, or reset it ("reset"), after
    waiting for `hang_until` if given."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
            if delay:
                await asyncio.sleep(delay)
        if then == "reset":
            await asyncio.sleep(0.02)  # let the chunks reach the client first
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:  # SO_LINGER 0: close with RST, as a crashed upstream would
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            assert request.transport is not None
            request.transport.abort()
            return resp
        if hang_until is not None:
            await hang_until.wait()
        await resp.write_eof()
        return resp

    return handler


def chunk(text: str, finish: str | None = None) -> bytes:
    data = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(data) + b"\n\n"


# --- complete -----------------------------------------------------------------------------------


async def test_complete_sends_the_body_and_headers_and_parses_usage(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = json_reply(ANSWER)
    provider = make_provider(headers={"HTTP-Referer": "https://faregate.dev", "X-Title": "faregate"})
    completion = await provider.complete(call(headers={"X-Request-Id": "req-1"}))
    assert completion.body == ANSWER
    assert completion.usage == Usage(11, 3)
    assert completion.status == 200
    seen = upstream.seen[0]
    assert seen.body == call().body
    assert seen.headers["Authorization"] == "Bearer sk-test-123"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["HTTP-Referer"] == "https://faregate.dev"
    assert seen.headers["X-Title"] == "faregate"
    assert seen.headers["X-Request-Id"] == "req-1"


async def test_a_query_in_the_base_url_stays_after_the_path(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # Azure OpenAI and others take a version or a key in the query: the path goes before it.
    queries: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        queries.append(request.query_string)
        return web.json_response(ANSWER)

    upstream.handler = answer
    provider = make_provider(base_url=f"{upstream.url}/?api-version=2024-10-21")
    assert (await provider.complete(call())).body == ANSWER
    assert queries == ["api-version=2024-10-21"]


async def test_key_is_read_once_at_construction(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream.handler = json_reply(ANSWER)
    provider = make_provider()
    monkeypatch.setenv(KEY_ENV, "sk-changed")
    await provider.complete(call())
    assert upstream.seen[0].headers["Authorization"] == "Bearer sk-test-123"


async def test_no_key_means_no_authorization_header(upstream: Upstream, pool: ConnectionPool) -> None:
    upstream.handler = json_reply(ANSWER)
    provider = OpenAICompatibleProvider("vllm", ProviderSettings(base_url=upstream.url + "/"), pool)
    await provider.complete(call())
    assert "Authorization" not in upstream.seen[0].headers


async def test_missing_or_malformed_usage_is_none(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    provider = make_provider()
    upstream.handler = json_reply({k: v for k, v in ANSWER.items() if k != "usage"})
    assert (await provider.complete(call())).usage is None
    upstream.handler = json_reply({**ANSWER, "usage": {"prompt_tokens": "11", "completion_tokens": 3}})
    assert (await provider.complete(call())).usage is None


async def test_empty_choices_are_returned_not_classified(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = json_reply({"choices": []})
    completion = await make_provider().complete(call())
    assert answer_is_empty(completion.body)


async def failure_of(
    provider: OpenAICompatibleProvider, the_call: UpstreamCall | None = None
) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as info:
        await provider.complete(the_call or call())
    return info.value


async def test_429_with_retry_after_seconds(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    error = {
        "error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit"}
    }
    upstream.handler = json_reply(error, 429, {"Retry-After": "7"})
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.retry_after) == ("rate_limited", 429, 7.0)
    assert failure.detail == "HTTP 429: Rate limit reached for requests"
    assert failure.body == error


async def test_429_with_retry_after_http_date(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    upstream.handler = json_reply({"error": {"message": "slow down"}}, 429, {"Retry-After": when})
    failure = await failure_of(make_provider())
    assert failure.kind == "rate_limited"
    assert failure.retry_after is not None and 27 <= failure.retry_after <= 30


async def test_429_wait_from_geminis_retry_info_in_its_array_body(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # Gemini's OpenAI-compatible endpoint sends no Retry-After: its wait is the RetryInfo detail.
    error = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota. Please retry in 2.42s.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"},
            ],
        }
    }
    upstream.handler = json_reply([error], 429)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.retry_after) == ("rate_limited", 429, 2.5)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        # The request limit is spent: its reset is the wait, not the tokens' full refill.
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1.5s",
                "x-ratelimit-remaining-tokens": "900",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            1.5,
        ),
        # Requests are left: it is the token limit that refused.
        (
            {
                "x-ratelimit-remaining-requests": "12",
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-remaining-tokens": "10",
                "x-ratelimit-reset-tokens": "2m59.56s",
            },
            179.56,
        ),
        # Which one is not said: the longer of the two.
        ({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "1s"}, 1.0),
        # A Retry-After says it best.
        ({"retry-after": "3", "x-ratelimit-reset-tokens": "6m0s"}, 3.0),
    ],
)
async def test_429_wait_from_openais_rate_limit_reset_headers(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    headers: dict[str, str],
    wait: float,
) -> None:
    error = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    upstream.handler = json_reply(error, 429, headers)
    failure = await failure_of(make_provider())
    assert failure.kind == "rate_limited"
    assert failure.retry_after == pytest.approx(wait)


async def test_429_insufficient_quota_is_an_account_that_needs_payment_not_a_rate_limit(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # OpenAI's answer when our account has no credit left: waiting and asking again gets the
    # same answer, so it is no rate limit to retry but the provider's failure to fall back from.
    message = "You exceeded your current quota, please check your plan and billing details."
    error = {"error": {"message": message, "type": "insufficient_quota", "code": "insufficient_quota"}}
    upstream.handler = json_reply(error, 429)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.retry_after) == ("server_error", 429, None)
    assert failure.detail == f"provider account needs payment (HTTP 429): {message}"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        # Groq's and OpenAI's words for a request more than the account's tokens per minute.
        (
            413,
            "Request too large for model `llama-3.3-70b-versatile` in organization `org_1` service tier "
            "`on_demand` on tokens per minute (TPM): Limit 12000, Requested 14137, please reduce your "
            "message size and try again.",
        ),
        (
            429,
            "Request too large for gpt-4o in organization org-1 on tokens per min (TPM): Limit 30000, "
            "Requested 61337. The input or output tokens must be reduced in order to run successfully.",
        ),
    ],
)
async def test_a_request_over_the_accounts_rate_limit_is_the_providers_failure_not_a_wait(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], status: int, message: str
) -> None:
    # No wait makes it fit our account's allowance (it is no rate limit to wait out), and it is not
    # the client's request that is wrong: another provider, or model, may serve it.
    error = {"error": {"message": message, "type": "tokens", "code": "rate_limit_exceeded"}}
    upstream.handler = json_reply(error, status, {"Retry-After": "2"})
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.retry_after) == ("server_error", status, None)
    assert failure.detail.startswith(
        f"the request exceeds the provider account's rate limit (HTTP {status}): "
    )


@pytest.mark.parametrize(
    ("error", "overflows"),
    [
        # OpenAI, and DeepSeek or vLLM (their words, no code of OpenAI's), and an unrelated refusal.
        (
            {
                "message": "This model's maximum context length is 128000 tokens.",
                "code": "context_length_exceeded",
            },
            True,
        ),
        (
            {"message": "This model's maximum context length is 65536 tokens. However, you requested 70000"},
            True,
        ),
        # Gemini's, and Together's (TGI's words), which say so in words of their own.
        (
            {
                "message": "The input token count (134123) exceeds the maximum number of tokens "
                "allowed (131072)."
            },
            True,
        ),
        (
            {
                "message": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4097. "
                "Given: 80125 `inputs` tokens and 4096 `max_new_tokens`",
                "param": "max_tokens",
            },
            True,
        ),
        ({"message": "Invalid schema for function 'f'", "code": "invalid_function_parameters"}, False),
    ],
)
async def test_a_prompt_too_long_for_the_models_window_is_told_apart_from_other_400s(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    error: dict[str, Any],
    overflows: bool,
) -> None:
    # The attempt loop moves on to a model with a larger window for the first two (routing/attempts.py).
    upstream.handler = json_reply({"error": {"type": "invalid_request_error", **error}}, 400)
    with pytest.raises(UpstreamRejected) as info:
        await make_provider().complete(call())
    assert info.value.status == 400
    assert overflows_context(info.value) is overflows


def test_a_429_in_place_of_a_stream_waits_as_geminis_retry_info_says() -> None:
    error = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "Resource exhausted",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    failure = json_instead_of_stream(orjson.dumps([error]), 200, ())
    assert (failure.kind, failure.status, failure.retry_after) == ("rate_limited", 429, 37.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1.5s", 1.5), ("1h2m3s", 3723.0), ("0s", 0.0)],
)
def test_go_duration_variants(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5", "-1s", "1x", "s", "1s2", "infs"])
def test_go_duration_unreadable(text: str) -> None:
    assert go_duration(text) is None


def test_parse_retry_after_variants() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "2.5"}) == 2.5
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("status", "detail"),
    [(500, "HTTP 500: boom"), (503, "HTTP 503: upstream overloaded"), (529, "HTTP 529: overloaded")],
)
async def test_5xx_is_server_error(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], status: int, detail: str
) -> None:
    message = detail.split(": ", 1)[1]
    upstream.handler = json_reply({"error": {"message": message}}, status)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.detail) == ("server_error", status, detail)


async def test_5xx_html_page_uses_the_reason_phrase(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"
        )

    upstream.handler = handler
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.detail) == ("server_error", "HTTP 502: Bad Gateway")


async def test_openrouters_moderation_403_says_the_input_was_flagged_not_the_key(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # OpenRouter's 403 for a model it moderates: our key is fine, the input was flagged. Another
    # provider (not moderated so) may serve it, so it still falls over.
    message = 'openai/gpt-4o requires moderation on OpenAI. Your input was flagged for "harassment".'
    metadata = {
        "reasons": ["harassment", "violence"],
        "flagged_input": "...",
        "provider_name": "OpenAI",
        "model_slug": "openai/gpt-4o",
    }
    upstream.handler = json_reply({"error": {"code": 403, "message": message, "metadata": metadata}}, 403)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status) == ("server_error", 403)
    assert failure.detail == (
        f"the provider's moderation flagged the input (HTTP 403; harassment, violence): {message}"
    )
    # Any client may send such input at will: it counts against no breaker (routing.attempts).
    assert failure.content_flagged


def test_openrouters_moderation_error_after_a_200_head_is_flagged_content_too() -> None:
    # Once a model has begun, OpenRouter's moderation of the output comes as an error in the body.
    error = {"code": 403, "message": "Output flagged", "metadata": {"reasons": ["violence"]}}
    failure = json_instead_of_stream(orjson.dumps({"error": error}), 200, ())
    assert (failure.status, failure.content_flagged) == (403, True)
    refused_key = {"code": 403, "message": "Key disabled"}
    assert not json_instead_of_stream(orjson.dumps({"error": refused_key}), 200, ()).content_flagged


async def test_openais_region_403_says_the_region_is_refused_not_the_key(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # OpenAI's answer to a gateway in a country it does not serve: no key would do; another
    # provider may serve it.
    message = "Country, region, or territory not supported"
    error = {"code": "unsupported_country_region_territory", "message": message, "type": "request_forbidden"}
    upstream.handler = json_reply({"error": error}, 403)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status) == ("server_error", 403)
    assert failure.detail == (
        f"the provider does not serve the gateway's country or region (HTTP 403): {message}"
    )
    # Every call from this gateway gets it, whoever sends it: it counts against the breaker.
    assert not failure.content_flagged


@pytest.mark.parametrize(
    ("error", "code"),
    [
        # Azure OpenAI's content filter, as its innererror says it too.
        (
            {
                "code": "content_filter",
                "message": "The response was filtered: the prompt triggered the content management policy.",
                "innererror": {"code": "ResponsibleAIPolicyViolation"},
            },
            "content_filter",
        ),
        ({"type": "content_policy_violation", "message": "Your request was rejected by our policy."}, None),
        ({"code": 403, "message": "Blocked", "innererror": {"code": "ResponsibleAIPolicyViolation"}}, None),
    ],
)
async def test_a_content_policy_403_says_so_not_that_the_key_failed(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    error: dict[str, Any],
    code: str | None,
) -> None:
    # The body says a content policy refused the input: the key is fine (it was worded "provider
    # authentication failed (check $KEY)"), another provider may serve it, and any client can send
    # such input at will, so it counts against no breaker.
    upstream.handler = json_reply({"error": error}, 403)
    failure = await failure_of(make_provider())
    said = code or error.get("type") or error["innererror"]["code"]
    assert (failure.kind, failure.status, failure.content_flagged) == ("server_error", 403, True)
    assert failure.detail == (
        f"the provider's content policy refused the request (HTTP 403; {said}): {error['message']}"
    )


@pytest.mark.parametrize("status", [401, 403])
async def test_bad_provider_key_is_server_error_not_the_clients_fault(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], status: int
) -> None:
    upstream.handler = json_reply(
        {"error": {"message": "Invalid API key", "code": "invalid_api_key"}}, status
    )
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status) == ("server_error", status)
    assert failure.detail.startswith(f"provider authentication failed (HTTP {status}; check ${KEY_ENV})")
    assert failure.detail.endswith("Invalid API key")
    assert not failure.content_flagged


# A realistic key, long enough for the masked forms vendors quote of it.
LONG_KEY = "sk-proj-Zq81vXwS0mT4bN7cR2dL9eY6uH3aK5fJ"


@pytest.mark.parametrize(
    "message",
    [
        # OpenAI's: the key's start and its last four characters around a run of stars.
        f"Incorrect API key provided: sk-proj-{'*' * 24}{LONG_KEY[-4:]}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        # DeepSeek's: stars and the last four characters.
        f"Authentication Fails, Your api key: ****{LONG_KEY[-4:]} is invalid",
        # A proxy that quotes the key whole.
        f"Invalid token: {LONG_KEY} was not found",
        # Past the length a message is clipped at: no half of the key is left by the clip.
        f"Invalid token: {'that is ' * 34}{LONG_KEY}",
    ],
)
async def test_a_refused_provider_key_is_never_quoted_in_the_failure(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    monkeypatch: pytest.MonkeyPatch,
    message: str,
) -> None:
    # The detail reaches the client's error message, the request record and the trace: the
    # operator's key (or the part of it the vendor quotes) must be in none of them.
    monkeypatch.setenv(KEY_ENV, LONG_KEY)
    upstream.handler = json_reply({"error": {"message": message, "code": "invalid_api_key"}}, 401)
    detail = (await failure_of(make_provider())).detail
    assert LONG_KEY[-4:] not in detail and LONG_KEY[:12] not in detail
    assert "[redacted]" in detail
    assert detail.startswith(f"provider authentication failed (HTTP 401; check ${KEY_ENV}): ")
    # What the vendor said is kept, but for the key.
    assert message[:14] in detail


async def test_the_provider_key_and_configured_header_secrets_are_never_quoted_to_the_client(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, LONG_KEY)
    gateway_token = "cf-aig-9f8e7d6c5b4a3928"
    provider = make_provider(headers={"cf-aig-authorization": f"Bearer {gateway_token}"})
    echo = f"bad request from key {LONG_KEY} through gateway token {gateway_token}"
    # A 4xx passed on to the client as its own error...
    upstream.handler = json_reply({"error": {"message": echo}}, 400)
    with pytest.raises(UpstreamRejected) as rejected:
        await provider.complete(call())
    # ...an error where a stream belongs...
    upstream.handler = json_reply({"error": {"message": echo}})
    with pytest.raises(UpstreamFailure) as instead:
        await collect(provider, call(stream=True))
    # ...and an error event mid-stream.
    error = b"data: " + orjson.dumps({"error": {"message": echo}}) + b"\n\n"
    upstream.handler = sse_reply([chunk("a"), error])
    with pytest.raises(UpstreamFailure) as mid:
        await collect(provider, call(stream=True))
    for text in (rejected.value.message, instead.value.detail, mid.value.detail):
        assert LONG_KEY not in text and gateway_token not in text
        assert "bad request from key [redacted] through gateway token [redacted]" in text


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_other_4xx_is_rejected_with_the_upstream_message(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], status: int
) -> None:
    error = {"error": {"message": "max_tokens is too large", "param": "max_tokens", "code": "invalid_value"}}
    upstream.handler = json_reply(error, status)
    with pytest.raises(UpstreamRejected) as info:
        await make_provider().complete(call())
    assert info.value.status == status
    assert info.value.message == "siliconflow rejected the request: max_tokens is too large"
    assert (info.value.code, info.value.param) == ("invalid_value", "max_tokens")


@pytest.mark.parametrize(
    ("status", "why"),
    [(409, "a lock timeout"), (425, "too early"), (499, "the upstream's proxy saw the call as abandoned")],
)
async def test_a_4xx_that_says_try_again_is_the_providers_failure(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], status: int, why: str
) -> None:
    # 409 (OpenAI's and Anthropic's SDKs retry it: a lock timeout), 425 (replay later) and 499
    # (nginx's "client closed request": the gateway was that client, not ours) say nothing
    # about the client's request: another try, or provider, may well serve it.
    upstream.handler = json_reply({"error": {"message": why}}, status)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status, failure.detail) == ("server_error", status, f"HTTP {status}: {why}")
    assert failure.retryable


async def test_an_error_body_in_a_one_element_array_is_read_as_the_error_it_holds(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # Gemini's OpenAI-compatible endpoint wraps its errors in a list: the message, code and param
    # are read from the object it holds, not quoted as JSON text.
    message = 'Invalid JSON payload received. Unknown name "reasoning": Cannot find field.'
    error = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    upstream.handler = json_reply([error], 400)
    with pytest.raises(UpstreamRejected) as info:
        await make_provider().complete(call())
    assert info.value.message == f"siliconflow rejected the request: {message}"
    exhausted = "Resource has been exhausted."
    quota = {"error": {"code": 429, "message": exhausted, "status": "RESOURCE_EXHAUSTED"}}
    upstream.handler = json_reply([quota], 429)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.detail, failure.body) == (
        "rate_limited",
        f"HTTP 429: {exhausted}",
        quota,
    )


async def test_a_400_that_refuses_the_providers_key_is_the_providers_failure(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # Gemini refuses a bad key with a 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not a 401:
    # the gateway's key is wrong, not the client's request, and another provider may serve it.
    message = "API key not valid. Please pass a valid API key."
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    error = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT", "details": [info]}}
    upstream.handler = json_reply([error], 400)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.status) == ("server_error", 400)
    assert failure.detail == f"provider authentication failed (HTTP 400; check ${KEY_ENV}): {message}"


async def test_4xx_with_plain_text_body(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="max_tokens  is\ntoo large", status=400)

    upstream.handler = handler
    with pytest.raises(UpstreamRejected, match="siliconflow rejected the request: max_tokens is too large"):
        await make_provider().complete(call())


@pytest.mark.parametrize("stream", [False, True])
async def test_404_is_the_providers_failure(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], stream: bool
) -> None:
    # The gateway chose the path and the upstream model name (the offer's `upstream`): a provider
    # that does not know them (a wrong name, a retired model, a wrong base_url) fails, and another
    # provider selling the model may not; the client's request is not what is wrong.
    error = {
        "error": {
            "message": "The model `up-m` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
    }
    upstream.handler = json_reply(error, 404)
    provider = make_provider()
    with pytest.raises(UpstreamFailure) as info:
        if stream:
            await collect(provider)
        else:
            await provider.complete(call())
    assert (info.value.kind, info.value.status) == ("server_error", 404)
    assert info.value.detail == (
        "the provider does not serve this model or path (HTTP 404): "
        "The model `up-m` does not exist or you do not have access to it."
    )


async def test_a_spent_deadline_fails_at_once(make_provider: Callable[..., OpenAICompatibleProvider]) -> None:
    failure = await failure_of(make_provider(), call(first_byte=0.0, total=0.0))
    assert (failure.kind, failure.detail) == ("timeout", "no time left for this attempt")


async def test_408_is_timeout(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = json_reply({"error": {"message": "request timed out"}}, 408)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.detail) == ("timeout", "HTTP 408: request timed out")


async def test_connection_refused(pool: ConnectionPool) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, with nobody listening now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider(
        "vllm", ProviderSettings(base_url=f"http://127.0.0.1:{port}/v1"), pool
    )
    failure = await failure_of(provider)
    assert failure.kind == "connection"
    assert failure.detail == f"connection refused by 127.0.0.1:{port}"
    assert acquired(pool) == 0


async def test_server_closing_mid_body_is_connection(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"choices": [')
        await asyncio.sleep(0.02)
        assert request.transport is not None
        request.transport.close()
        return resp

    upstream.handler = handler
    failure = await failure_of(make_provider())
    assert failure.kind == "connection"
    assert failure.detail.startswith("connection closed mid-body (Not enough data to satisfy content length")
    assert acquired(pool) == 0


async def test_server_dropping_the_request_is_connection(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    upstream.handler = handler
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.detail) == (
        "connection",
        "server closed the connection before the response head",
    )


async def test_slow_head_times_out_at_the_first_byte_deadline(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await upstream.release.wait()
        return web.Response()

    upstream.handler = handler
    loop = asyncio.get_running_loop()
    started = loop.time()
    failure = await failure_of(make_provider(), call(first_byte=0.2, total=5.0))
    assert loop.time() - started < 2.0
    assert (failure.kind, failure.detail) == ("timeout", "no response head within 0.2s")
    assert acquired(pool) == 0


async def test_slow_body_times_out_at_the_total_deadline(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"{")
        await upstream.release.wait()
        return resp

    upstream.handler = handler
    failure = await failure_of(make_provider(), call(first_byte=0.2, total=0.4))
    assert (failure.kind, failure.detail) == ("timeout", "response body not complete within 0.4s")


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"<html>oops</html>", "response body is not valid JSON"),
        (b"[1, 2]", "response body is a JSON list, expected an object"),
        (b"", "response body is not valid JSON"),
    ],
)
async def test_unparsable_200_is_bad_response(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], payload: bytes, detail: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload, content_type="application/json")

    upstream.handler = handler
    failure = await failure_of(make_provider())
    assert failure.kind == "bad_response"
    assert failure.detail.startswith(detail)


async def test_connections_are_reused(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = json_reply(ANSWER)
    provider = make_provider()
    for _ in range(3):
        await provider.complete(call())
    assert len({seen.peer_port for seen in upstream.seen}) == 1
    assert acquired(pool) == 0


async def test_upstream_cookies_are_never_sent_back(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = json_reply(ANSWER, headers={"Set-Cookie": "tenant=a; Path=/"})
    provider = make_provider()
    await provider.complete(call())
    await provider.complete(call())
    assert "Cookie" not in upstream.seen[1].headers


# --- stream -------------------------------------------------------------------------------------


async def collect(provider: OpenAICompatibleProvider, the_call: UpstreamCall | None = None) -> list[Any]:
    return [c async for c in provider.stream(the_call or call(stream=True))]


def texts(chunks: list[Any]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks if c.get("choices")]


async def test_stream_yields_chunks_in_order_and_stops_at_done(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    usage_chunk = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}\n\n'
    parts = [b": ping\n\n", chunk("Hel"), chunk("lo"), chunk("!", "stop"), usage_chunk, b"data: [DONE]\n\n"]
    parts.append(chunk("after done"))
    # Deliver the bytes in awkward pieces: boundaries inside lines and between CR and LF.
    wire = b"".join(parts).replace(b"\n", b"\r\n")
    upstream.handler = sse_reply([wire[i : i + 7] for i in range(0, len(wire), 7)])
    provider = make_provider()
    chunks = await collect(provider)
    assert texts(chunks) == ["Hel", "lo", "!"]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert usage_of(chunks[-1]) == Usage(4, 2)
    assert upstream.seen[0].body["stream"] is True
    assert acquired(pool) == 0
    # Ending at [DONE] drained the body, so the connection went back to the pool.
    await collect(provider)
    assert upstream.seen[0].peer_port == upstream.seen[1].peer_port


async def test_stream_reads_yield_what_each_read_brought_together(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    # Two writes upstream, apart in time: two reads here, the second's two chunks together; the
    # first read is cut after the first content, which goes at once.
    parts = [chunk("a") + chunk("b") + b": ping\n\n", chunk("c") + chunk("d", "stop") + b"data: [DONE]\n\n"]
    upstream.handler = sse_reply(parts, delay=0.1)
    reads = [read async for read in make_provider().stream_reads(call(stream=True))]
    assert [texts(read) for read in reads] == [["a"], ["b"], ["c", "d"]]
    assert acquired(pool) == 0


async def test_truncated_stream_just_ends(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply([chunk("a"), chunk("b"), b'data: {"choices": [{"del'])
    assert texts(await collect(make_provider())) == ["a", "b"]
    assert acquired(pool) == 0


async def test_a_long_stream_is_not_cut_by_the_first_byte_deadline(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = sse_reply([chunk("a"), chunk("b"), chunk("c", "stop")], delay=0.15)
    chunks = await collect(make_provider(), call(stream=True, first_byte=0.1, total=5.0))
    assert texts(chunks) == ["a", "b", "c"]


async def test_stream_stalling_past_the_total_deadline_times_out(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply([chunk("a")], hang_until=upstream.release)
    received: list[Any] = []
    with pytest.raises(UpstreamFailure) as info:
        async for c in make_provider().stream(call(stream=True, first_byte=0.2, total=0.4)):
            received.append(c)
    assert texts(received) == ["a"]
    assert (info.value.kind, info.value.detail) == (
        "timeout",
        "stream not finished within 0.4s (1 chunks received)",
    )
    assert acquired(pool) == 0


@pytest.mark.parametrize("sent", [0, 1])
async def test_a_stream_silent_past_its_idle_timeout_fails_long_before_the_total_deadline(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    pool: ConnectionPool,
    sent: int,
) -> None:
    # The head (and maybe a chunk), then nothing: the idle timeout ends it, not the total deadline
    # (600 s by default), so the attempt loop has time to fall back, or the relay to end the stream.
    upstream.handler = sse_reply([chunk("a")][:sent], hang_until=upstream.release)
    received: list[Any] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamFailure) as info:
        async for c in make_provider().stream(call(stream=True, first_byte=5.0, total=30.0, idle=0.3)):
            received.append(c)
    assert 0.25 < loop.time() - started < 2.0
    assert len(received) == sent
    assert (info.value.kind, info.value.detail) == (
        "timeout",
        f"stream stalled: nothing received for 0.3s ({sent} chunks received)",
    )
    assert acquired(pool) == 0


async def test_a_slow_stream_that_keeps_sending_is_not_idle(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # Each chunk comes within the idle timeout; all of them together take several times longer.
    parts = [chunk(t) for t in "abcdef"] + [chunk("g", "stop")]
    upstream.handler = sse_reply(parts, delay=0.1)
    chunks = await collect(make_provider(), call(stream=True, first_byte=5.0, total=5.0, idle=0.3))
    assert texts(chunks) == list("abcdefg")


async def test_a_reader_that_stops_reading_is_no_idle_upstream(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # More than HIGH_WATER arrives while the reader is busy: the socket stops being read, so
    # the upstream's silence is ours, and it must not end the stream as stalled.
    big = chunk("x" * (3 << 20))
    upstream.handler = sse_reply([chunk("a"), chunk("b"), big, chunk("c", "stop")], delay=0.1)
    reads = make_provider().stream_reads(call(stream=True, first_byte=5.0, total=10.0, idle=0.3))
    got = [await anext(reads), await anext(reads)]  # "b" was waited for: the idle timer is armed
    await asyncio.sleep(0.8)  # a slow client; the upstream has sent everything by now
    got += [read async for read in reads]
    assert "".join(t for read in got for t in texts(read)) == "ab" + "x" * (3 << 20) + "c"


async def test_mid_stream_reset_raises_connection(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply([chunk("a"), chunk("b"), chunk("c")], then="reset")
    received: list[Any] = []
    with pytest.raises(UpstreamFailure) as info:
        async for c in make_provider().stream(call(stream=True)):
            received.append(c)
    assert texts(received) == ["a", "b", "c"]
    assert (info.value.kind, info.value.detail) == ("connection", "connection reset mid-body after 3 chunks")
    assert acquired(pool) == 0


async def test_early_aclose_releases_the_connection(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply([chunk("a"), chunk("b")], hang_until=upstream.release)
    stream = make_provider().stream(call(stream=True))
    first = await anext(stream)
    assert texts([first]) == ["a"]
    assert acquired(pool) == 1
    await stream.aclose()
    assert acquired(pool) == 0


async def test_stream_error_status_raises_before_any_chunk(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = json_reply({"error": {"message": "try later"}}, 429, {"retry-after-ms": "250"})
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert (info.value.kind, info.value.retry_after) == ("rate_limited", 0.25)
    upstream.handler = json_reply({"error": {"message": "bad messages"}}, 400)
    with pytest.raises(UpstreamRejected, match="siliconflow rejected the request: bad messages"):
        await collect(make_provider())
    assert acquired(pool) == 0


async def test_non_json_chunk_is_bad_response(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], pool: ConnectionPool
) -> None:
    upstream.handler = sse_reply([chunk("a"), b"data: {not json\n\n", chunk("b")])
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert info.value.kind == "bad_response"
    assert info.value.detail.startswith("stream chunk 2 is not valid JSON")
    assert acquired(pool) == 0


async def test_error_object_mid_stream_is_server_error(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    choice = b'"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]'
    error = b'data: {"error": {"message": "provider overloaded", "code": 502}, ' + choice + b"}\n\n"
    upstream.handler = sse_reply([chunk("a"), error])
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    # OpenRouter's `error.code` is the status the error stands for (the head said 200).
    assert (info.value.kind, info.value.status, info.value.detail) == (
        "server_error",
        502,
        "error event after 1 chunks: provider overloaded",
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_sent_with_a_200_is_the_failure_it_names(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], stream: bool
) -> None:
    # OpenRouter answers 200 once a model has begun, and an error after that comes in the body or
    # as an event, its `code` the status: a rate limit there is one (its kind and status say so,
    # for the retry, the capacity checks and the record), and a whole body carrying only an error
    # is that error, with its message, not "a 200 with no choices".
    error = {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-min"}}
    if stream:
        upstream.handler = sse_reply([b"data: " + orjson.dumps(error) + b"\n\n"])
    else:
        upstream.handler = json_reply(error)
    with pytest.raises(UpstreamFailure) as info:
        if stream:
            await collect(make_provider())
        else:
            await make_provider().complete(call())
    assert (info.value.kind, info.value.status) == ("rate_limited", 429)
    assert info.value.detail.endswith(": Rate limit exceeded: free-models-per-min")
    assert info.value.body == error
    upstream.handler = json_reply({"error": {"code": 502, "message": "Provider returned error"}})
    with pytest.raises(UpstreamFailure) as info:
        if stream:
            await collect(make_provider())
        else:
            await make_provider().complete(call())
    assert (info.value.kind, info.value.status) == ("server_error", 502)
    assert info.value.detail.endswith(": Provider returned error")


async def test_json_body_instead_of_a_stream(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    upstream.handler = json_reply({"error": {"message": "quota exceeded"}})
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert (info.value.kind, info.value.detail) == (
        "server_error",
        "error instead of a stream: quota exceeded",
    )
    upstream.handler = json_reply(ANSWER)
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert info.value.kind == "bad_response"


async def test_an_html_page_instead_of_a_stream_is_a_bad_response(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    # A 200 page where the event stream belongs (a base_url that names a web UI, a proxy's login
    # page) has no event in it: it is no blank answer ("stream ended without any chunk") but a
    # bad response that says what came.
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<!DOCTYPE html><html><title>Sign in</title></html>", content_type="text/html"
        )

    upstream.handler = handler
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert (info.value.kind, info.value.status) == ("bad_response", 200)
    assert (
        info.value.detail
        == "a page instead of an event stream: '<!DOCTYPE html><html><title>Sign in</title></html>'"
    )


ENDLESS_BYTES = 32 << 20  # an endless body's bound here: 500 times the cap on what is read


@dataclass
class Endless:
    """How an endless body (`endless_reply`) ended: written whole, or cut off by the client."""

    ended: asyncio.Event = field(default_factory=asyncio.Event)
    whole: bool = False


def endless_reply(status: int, first: bytes, outcome: Endless) -> Handler:
    """A body as good as endless (a misbehaving upstream, or one sending a 1 GB error page):
    `first`, then words for as long as the client reads them, up to ENDLESS_BYTES."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            await response.write(first)
            piece = b" boom" * 13_000
            for _ in range(ENDLESS_BYTES // len(piece)):
                await response.write(piece)
            await response.write_eof()
            outcome.whole = True
        except ConnectionError:
            pass
        finally:
            outcome.ended.set()
        return response

    return handler


@pytest.mark.parametrize("stream", [False, True])
async def test_an_endless_error_body_is_read_only_up_to_the_cap(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], stream: bool
) -> None:
    """An error body is read up to MAX_ERROR_BODY_BYTES, then the connection is closed, not read
    whole into memory: the status and the start of its message are kept."""
    outcome = Endless()
    upstream.handler = endless_reply(500, b"upstream exploded:", outcome)
    with pytest.raises(UpstreamFailure) as info:
        if stream:
            await collect(make_provider(), call(stream=True, total=60))
        else:
            await make_provider().complete(call(total=60))
    assert (info.value.kind, info.value.status) == ("server_error", 500)
    assert info.value.detail.startswith("HTTP 500: upstream exploded: boom boom")
    assert info.value.detail.endswith("…")  # clipped
    await asyncio.wait_for(outcome.ended.wait(), 30)
    assert not outcome.whole


async def test_an_endless_json_body_instead_of_a_stream_is_read_only_up_to_the_cap(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider]
) -> None:
    outcome = Endless()
    upstream.handler = endless_reply(200, b'{"object": "chat.completion",', outcome)
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider(), call(stream=True, total=60))
    assert info.value.kind == "bad_response"
    assert info.value.detail.startswith('a JSON body instead of an event stream: \'{"object"')
    await asyncio.wait_for(outcome.ended.wait(), 30)
    assert not outcome.whole


# --- registry -----------------------------------------------------------------------------------


def registry_settings(url: str) -> Any:
    return parse_settings(
        {
            "providers": {
                "keyed": {"base_url": url, "api_key_env": KEY_ENV},
                "keyless": {"base_url": url},
                "forced_off": {"base_url": url, "api_key_env": KEY_ENV, "enabled": False},
                "forced_on": {"base_url": url, "api_key_env": "FAREGATE_TEST_UNSET_KEY", "enabled": True},
            }
        }
    )


async def test_registry_builds_enabled_providers_only(
    upstream: Upstream, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("FAREGATE_TEST_UNSET_KEY", raising=False)
    registry = ProviderRegistry.build(registry_settings(upstream.url), pool)
    assert sorted(registry.names()) == ["forced_on", "keyless"]
    monkeypatch.setenv(KEY_ENV, "sk-x")
    registry = ProviderRegistry.build(registry_settings(upstream.url), pool)
    assert sorted(registry.names()) == ["forced_on", "keyed", "keyless"]
    with pytest.raises(KeyError, match="forced_off"):
        registry.get("forced_off")
    await registry.close()
    assert not pool.closed  # an injected pool belongs to its owner


async def test_registry_adds_the_simulator_and_calls_through_the_shared_pool(
    upstream: Upstream, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = with_simulator(registry_settings("http://127.0.0.1:9/v1"), upstream.url)
    registry = ProviderRegistry.build(settings, pool)
    assert "sim" in registry and registry.simulator_url == upstream.url
    entry = registry.entry("sim")
    assert (entry.first_byte_timeout_s, entry.total_timeout_s, entry.stream_idle_timeout_s) == (
        settings.sim.first_byte_timeout_s,
        settings.sim.total_timeout_s,
        settings.sim.stream_idle_timeout_s,
    )
    assert (
        settings.sim.stream_idle_timeout_s
        == ProviderSettings(base_url="http://x").stream_idle_timeout_s
        == 60
    )
    upstream.handler = json_reply(ANSWER)
    completion = await registry.get("sim").complete(call())
    assert completion.usage == Usage(11, 3)
    plain = ProviderRegistry.build(registry_settings(upstream.url), pool)
    assert "sim" not in plain and plain.simulator_url is None


async def test_registry_create_owns_its_pool(upstream: Upstream) -> None:
    registry = ProviderRegistry.create(with_simulator(registry_settings(upstream.url), upstream.url))
    assert registry.pool.limit >= 2000 and registry.pool.limit_per_host == 1000
    await registry.close()
    assert registry.pool.closed


async def test_a_header_that_could_split_the_request_is_a_config_error(pool: ConnectionPool) -> None:
    settings = parse_settings(
        {
            "providers": {
                "bad": {"base_url": "http://127.0.0.1:9/v1", "headers": {"X-Title": "a\r\nHost: evil"}}
            }
        }
    )
    with pytest.raises(ConfigError, match=r"providers\.bad: header X-Title"):
        ProviderRegistry.build(settings, pool)


async def test_a_header_may_take_its_value_from_the_environment(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`${NAME}` in a configured header's value is the variable's value, as api_key_env's is the
    key (a gateway token belongs in the environment, not in the config file): not sent as the
    text `${NAME}`. The value is a secret like the key: never quoted to a client."""
    token = "cf-aig-0123456789abcdef"
    monkeypatch.setenv("FAREGATE_TEST_GATEWAY_TOKEN", token)
    provider = make_provider(
        headers={"cf-aig-authorization": "Bearer ${FAREGATE_TEST_GATEWAY_TOKEN}", "X-Title": "$5 ${"}
    )
    upstream.handler = json_reply({"error": {"message": f"bad token {token}"}}, 400)
    with pytest.raises(UpstreamRejected) as rejected:
        await provider.complete(call())
    assert upstream.seen[0].headers["cf-aig-authorization"] == f"Bearer {token}"
    assert upstream.seen[0].headers["X-Title"] == "$5 ${"  # no reference: as written
    assert token not in rejected.value.message and "bad token [redacted]" in rejected.value.message


async def test_a_header_naming_an_unset_variable_is_refused_at_start(
    pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAREGATE_TEST_UNSET_TOKEN", raising=False)
    headers = {"X-Token": "Bearer ${FAREGATE_TEST_UNSET_TOKEN}"}
    url = "http://127.0.0.1:9/v1"
    settings = parse_settings(
        {
            "providers": {
                "on": {"base_url": url, "enabled": True, "headers": headers},
                "off": {"base_url": url, "enabled": False, "headers": headers},
            }
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"providers\.on: header X-Token: \$\{FAREGATE_TEST_UNSET_TOKEN\} names an environment "
        r"variable that is not set",
    ):
        ProviderRegistry.build(settings, pool)
    off = parse_settings({"providers": {"off": {"base_url": url, "enabled": False, "headers": headers}}})
    assert "off" not in ProviderRegistry.build(off, pool)  # a provider that is off needs none


def test_pool_limits_follow_the_enabled_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    url = "http://127.0.0.1:9/v1"
    settings = parse_settings(
        {
            "providers": {
                "a": {"base_url": url, "max_connections": 300, "connect_timeout_s": 3},
                "b": {"base_url": url, "max_connections": 50, "enabled": True},
                "off": {"base_url": url, "api_key_env": KEY_ENV, "max_connections": 9000},
            },
            "sim": {"mode": "off"},
        }
    )
    assert pool_limits(settings) == (350, 300, 10.0)
    assert pool_limits(None) == (1000, 0, 10.0)
    simulated = with_simulator(parse_settings({"providers": {}, "sim": {"mode": "on"}}))
    assert pool_limits(simulated) == (1000, 1000, 10.0)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"choices": "abc"}, "response body: choices is not a list"),
        ({"choices": ["oops"]}, "response body: choice 0 is not an object"),
        ({"choices": [None]}, "response body: choice 0 is not an object"),
        ({"choices": [{"message": "hi"}]}, "response body: choice 0's message is not an object"),
        (
            {"choices": [{"message": {"content": "hi", "tool_calls": "x"}}]},
            "response body: choice 0's tool_calls is not a list of objects",
        ),
        (
            {"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]},
            "response body: choice 0's tool_calls is not a list of objects",
        ),
    ],
)
async def test_a_200_whose_choices_cannot_be_read_is_bad_response(
    upstream: Upstream, make_provider: Callable[..., OpenAICompatibleProvider], body: Any, detail: str
) -> None:
    # Valid JSON in a shape no reader expects: a failure to fall back from, not a crash (a 500).
    upstream.handler = json_reply(body)
    failure = await failure_of(make_provider())
    assert (failure.kind, failure.detail) == ("bad_response", detail)


@pytest.mark.parametrize(
    ("part", "detail"),
    [
        (b'data: {"choices": [null]}\n\n', "stream chunk 2: choice 0 is not an object"),
        (b'data: {"choices": [{"delta": "x"}]}\n\n', "stream chunk 2: choice 0's delta is not an object"),
        (b'data: {"choices": {"a": 1}}\n\n', "stream chunk 2: choices is not a list"),
    ],
)
async def test_a_stream_chunk_whose_choices_cannot_be_read_is_bad_response(
    upstream: Upstream,
    make_provider: Callable[..., OpenAICompatibleProvider],
    pool: ConnectionPool,
    part: bytes,
    detail: str,
) -> None:
    upstream.handler = sse_reply([chunk("a"), part, chunk("b")])
    with pytest.raises(UpstreamFailure) as info:
        await collect(make_provider())
    assert (info.value.kind, info.value.detail) == ("bad_response", detail)
    assert acquired(pool) == 0
