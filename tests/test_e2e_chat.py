"""End to end: the official openai SDK against the gateway and the simulator, both real processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from faregate import tokens
from harness import GatewayProcess, cache_written, wait_until

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


@pytest.fixture()
def aclient(gateway: GatewayProcess, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


def records(gateway: GatewayProcess, request_id: str, wait: float = 3.0) -> list[sqlite3.Row]:
    """The rows recorded for one request (the writer batches, so poll briefly)."""
    deadline = time.monotonic() + wait
    while True:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM request_records WHERE request_id = ?", (request_id,)).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def prompt_of(n_tokens: int, word: str = " hello") -> list[dict[str, str]]:
    """A user message whose prompt (with OpenAI's chat framing) is exactly n tokens (`word` one)."""
    content = word * (n_tokens - tokens.TOKENS_PER_MESSAGE - tokens.TOKENS_PER_REPLY)
    messages = [{"role": "user", "content": content}]
    assert tokens.count_messages(messages) == n_tokens
    return messages


# -- the happy paths -------------------------------------------------------------------------


def test_non_streaming_answer_with_cost(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model="deepseek-v4-flash", messages=MSG)
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello there"
    assert reply.model == "deepseek-ai/DeepSeek-V4-Flash"
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens == tokens.count_messages(MSG)
    assert usage.completion_tokens == tokens.count_text("Hello there")
    expected = (
        Decimal(usage.prompt_tokens) * Decimal("0.27") + Decimal(usage.completion_tokens) * Decimal("1.10")
    ) / Decimal(1_000_000)
    assert Decimal(raw.headers["x-faregate-cost-usd"]) == expected
    assert Decimal(str(usage.model_extra["cost"])) == expected  # type: ignore[index]
    assert raw.headers["x-faregate-model"] == "deepseek-ai/DeepSeek-V4-Flash"
    assert raw.headers["x-faregate-provider"] == "sim"
    request_id = raw.headers["x-faregate-request-id"]
    rows = records(gateway, request_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == 200 and row["model_used"] == "deepseek-ai/DeepSeek-V4-Flash"
    assert Decimal(row["cost_usd"]) == expected and row["usage_estimated"] == 0
    assert row["prompt_tokens"] == usage.prompt_tokens and row["stream"] == 0


def test_exact_cost_1000_in_500_out_on_deepseek_v4_flash(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-v4-flash", messages=prompt_of(1000), extra_body={"sim": {"answer": {"lorem": 500}}}
    )
    reply = raw.parse()
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1000, 500)
    assert raw.headers["x-faregate-cost-usd"] == "0.00082"
    assert reply.usage.model_extra["cost"] == 0.00082  # type: ignore[index]


def test_streaming_with_usage_chunk_and_cost(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-v4-flash",
        messages=prompt_of(1000),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"sim": {"answer": {"lorem": 500}}},
    )
    request_id = raw.headers["x-faregate-request-id"]
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert tokens.count_text(text) == 500
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (1000, 500)
    assert last.usage.model_extra["cost"] == 0.00082  # type: ignore[index]
    assert all(c.usage is None for c in chunks[:-1])
    row = records(gateway, request_id)[0]
    assert row["stream"] == 1 and Decimal(row["cost_usd"]) == Decimal("0.00082")
    assert row["ttft_ms"] is not None and row["ttft_ms"] > 0


def test_every_answer_says_what_the_baseline_model_would_have_cost_as_recorded(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    """usage.baseline_cost and x-faregate-baseline-cost-usd: the same 1000 tokens in and 500 out
    on gpt-4o (baseline_model's default, 2.50 and 10.00 per 1M), whole, streamed and from the
    cache, each the figure its record keeps (the dashboard's savings are baseline - cost)."""
    baseline = Decimal("0.0075")
    asked: dict[str, Any] = {
        "model": "deepseek-v4-flash",
        "messages": prompt_of(1000, " baseline"),  # no other test's: the first ask is a miss
        "temperature": 0,
        "extra_body": {"sim": {"answer": {"lorem": 500}}},
    }
    with cache_written(gateway):
        whole = client.chat.completions.with_raw_response.create(**asked)
    usage = whole.parse().usage
    assert usage is not None and usage.model_extra is not None
    assert Decimal(whole.headers["x-faregate-baseline-cost-usd"]) == baseline
    assert usage.model_extra["baseline_cost"] == float(baseline) and usage.model_extra["cost"] == 0.00082
    hit = client.chat.completions.with_raw_response.create(**asked)
    assert hit.headers["x-faregate-cache"] == "hit" and hit.headers["x-faregate-cost-usd"] == "0"
    assert Decimal(hit.headers["x-faregate-baseline-cost-usd"]) == baseline
    hit_usage = hit.parse().usage
    assert hit_usage is not None and hit_usage.model_extra is not None
    assert (hit_usage.model_extra["cost"], hit_usage.model_extra["baseline_cost"]) == (0, float(baseline))
    streamed = client.chat.completions.with_raw_response.create(
        **{**asked, "temperature": 1}, stream=True, stream_options={"include_usage": True}
    )
    last = list(streamed.parse())[-1]
    assert last.usage is not None and last.usage.model_extra is not None
    assert last.usage.model_extra["baseline_cost"] == float(baseline)
    for raw, told in ((whole, usage), (hit, hit_usage), (streamed, last.usage)):
        (row,) = records(gateway, raw.headers["x-faregate-request-id"])
        assert Decimal(row["baseline_cost_usd"]) == baseline
        assert told.model_extra is not None
        assert told.model_extra["baseline_cost"] == float(Decimal(row["baseline_cost_usd"]))
    for raw in (whole, hit):
        (row,) = records(gateway, raw.headers["x-faregate-request-id"])
        assert Decimal(raw.headers["x-faregate-baseline-cost-usd"]) == Decimal(row["baseline_cost_usd"])


def test_streaming_without_usage_request_gets_no_usage_but_is_billed(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="deepseek-v4-flash",
        messages=prompt_of(1000),
        stream=True,
        extra_body={"sim": {"answer": {"lorem": 500}}},
    )
    chunks = list(raw.parse())
    assert all(c.choices for c in chunks), "no usage-only chunk unless asked"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    row = records(gateway, raw.headers["x-faregate-request-id"])[0]
    assert Decimal(row["cost_usd"]) == Decimal("0.00082") and row["usage_estimated"] == 0


def test_raw_sse_framing_ends_with_done(gateway: GatewayProcess, api_key: str) -> None:
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={
            "model": "qwen3-8b",
            "messages": MSG,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200
    frames = [f for f in response.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    first = json.loads(frames[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


async def test_async_client_streaming_and_not(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.chat.completions.create(model="glm-4-plus", messages=MSG)
    assert reply.choices[0].message.content == "Hello there"
    stream = await aclient.chat.completions.create(
        model="glm-4-plus", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    parts = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == "Hello there"
    assert parts[-1].usage is not None and parts[-1].usage.model_extra["cost"] > 0  # type: ignore[index]


async def test_concurrent_requests_each_billed_once(
    aclient: openai.AsyncOpenAI, gateway: GatewayProcess
) -> None:
    async def one(i: int) -> str:
        raw = await aclient.chat.completions.with_raw_response.create(
            model="qwen3-8b", messages=[{"role": "user", "content": f"n{i}"}]
        )
        return raw.headers["x-faregate-request-id"]

    ids = await asyncio.gather(*(one(i) for i in range(50)))
    assert len(set(ids)) == 50

    def recorded() -> int:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            marks = ",".join("?" * len(ids))
            query = f"SELECT COUNT(*) FROM request_records WHERE request_id IN ({marks})"
            return int(db.execute(query, ids).fetchone()[0])

    # The writer batches off the request path: wait for the 50 rows, then check none is doubled.
    wait_until(lambda: recorded() >= 50, "the 50 requests are recorded")
    assert recorded() == 50


# -- pass-through ------------------------------------------------------------------------------


def inspect(client: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    extra = {"sim": {"answer": "inspect"}, **kwargs.pop("extra_body", {})}
    reply = client.chat.completions.create(extra_body=extra, **kwargs)
    content = reply.choices[0].message.content
    assert content is not None
    received: dict[str, Any] = json.loads(content)
    return received


def test_unknown_and_tool_fields_pass_through(client: openai.OpenAI) -> None:
    received = inspect(
        client,
        model="deepseek-v4-flash",
        messages=MSG,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        response_format={"type": "json_object"},
        seed=42,
        temperature=0.2,
        logprobs=True,
        max_tokens=100_000,
        extra_body={"faregate": {"tier": "economy"}, "top_k": 5},
    )
    assert received["model"] == "deepseek-ai/DeepSeek-V4-Flash"
    assert received["tools"] == TOOLS and received["tool_choice"] == "auto"
    assert received["response_format"] == {"type": "json_object"}
    assert received["seed"] == 42 and received["logprobs"] is True and received["top_k"] == 5
    assert received["max_tokens"] == 8192, "capped at the model's max output"
    assert "faregate" not in received


def test_stream_asks_upstream_for_usage(gateway: GatewayProcess, api_key: str) -> None:
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {api_key}"},
        json={"model": "qwen3-8b", "messages": MSG, "stream": True, "sim": {"answer": "inspect"}},
    )
    text = "".join(
        (json.loads(f[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for f in response.text.split("\n\n")
        if f.startswith("data: {")
    )
    assert json.loads(text)["stream_options"] == {"include_usage": True}


def test_tool_call_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="deepseek-v4-flash",
        messages=MSG,
        tools=TOOLS,  # type: ignore[arg-type]
        extra_body={"sim": {"tool_call": True}},
    )
    call = reply.choices[0].message.tool_calls
    assert call and call[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert reply.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(
        model="deepseek-v4-flash",
        messages=MSG,
        tools=TOOLS,
        stream=True,  # type: ignore[arg-type]
        extra_body={"sim": {"tool_call": True}},
    )
    chunks = list(stream)
    names = [
        tc.function.name
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]


def test_image_parts_pass_through_to_vision_model(client: openai.OpenAI) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
        }
    ]
    received = inspect(client, model="glm-4.5v", messages=messages)
    assert received["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": PNG}}


def test_audio_parts_pass_through_to_omni_model(client: openai.OpenAI) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    received = inspect(client, model="qwen3-omni-30b", messages=[{"role": "user", "content": [part]}])
    assert received["messages"][0]["content"][0] == part


def test_image_to_text_only_model_is_rejected(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="deepseek-v4-flash", messages=messages)  # type: ignore[arg-type]
    assert "deepseek-ai/DeepSeek-V4-Flash" in info.value.message and "image" in info.value.message
    assert info.value.code == "unsupported_modality"


def test_audio_to_vision_only_model_is_rejected(client: openai.OpenAI) -> None:
    part = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(openai.BadRequestError, match="audio"):
        client.chat.completions.create(model="glm-4.5v", messages=[{"role": "user", "content": [part]}])  # type: ignore[list-item]


# -- errors ----------------------------------------------------------------------------------


def test_wrong_key_is_401_and_nothing_forwarded(gateway: GatewayProcess, sim: Any) -> None:
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="fg-wrong", max_retries=0)
    before = httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="deepseek-v4-flash", messages=MSG)
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    after = httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()
    assert after == before


def test_missing_key_is_401(gateway: GatewayProcess) -> None:
    response = httpx.post(gateway.base_url + "/chat/completions", json={"model": "x", "messages": MSG})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("presented", [b"fg-\xff\xfeabc", b"fg-master-\xe9t\xe9"])
def test_a_key_that_is_not_utf_8_is_refused_not_a_500(gateway: GatewayProcess, presented: bytes) -> None:
    # Header bytes that are not UTF-8 (Latin-1 text, a mangled paste) reach the key check as
    # lone surrogates: hashing them failed, and every route answered 500 with a logged traceback.
    root = gateway.base_url.removesuffix("/v1")
    for header in ({"Authorization": b"Bearer " + presented}, {"x-api-key": presented}):
        chat = httpx.post(gateway.base_url + "/chat/completions", json={"model": "x", "messages": MSG},
                          headers=header)  # fmt: skip
        assert (chat.status_code, chat.json()["error"]["code"]) == (401, "invalid_api_key")
        assert httpx.get(gateway.base_url + "/models", headers=header).status_code == 401
        assert httpx.get(gateway.base_url + "/me", headers=header).status_code == 401
    admin = httpx.get(root + "/admin/keys", headers={"Authorization": b"Bearer " + presented})
    assert (admin.status_code, admin.json()["error"]["code"]) == (403, "not_admin")
    assert httpx.get(root + "/health", headers={"Authorization": b"Bearer " + presented}).status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "deepseek-v4-flash"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'["a"]', 400, "JSON object"),
    ],
)
def test_bad_bodies(
    gateway: GatewayProcess, api_key: str, content: bytes, status: int, fragment: str
) -> None:
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert records(gateway, response.headers["x-faregate-request-id"])[0]["status"] == status


def test_the_sdk_reads_the_request_id_of_answers_and_errors(client: openai.OpenAI) -> None:
    """The SDK gives an answer's `_request_id` and an error's `request_id` from `x-request-id`:
    the gateway's request id, the one its records and feedback know, whole, streamed or refused."""
    raw = client.chat.completions.with_raw_response.create(model="deepseek-v4-flash", messages=MSG)
    assert raw.parse()._request_id == raw.headers["x-faregate-request-id"]
    with client.chat.completions.with_streaming_response.create(
        model="deepseek-v4-flash", messages=MSG, stream=True
    ) as streamed:
        assert streamed.request_id == streamed.headers["x-faregate-request-id"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="deepseek-v4-flsh", messages=MSG)
    assert info.value.request_id == info.value.response.headers["x-faregate-request-id"]
    assert info.value.request_id.startswith("req_")


def test_a_service_tier_billed_at_other_prices_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="deepseek-v4-flash", messages=MSG, service_tier="priority")
    assert info.value.param == "service_tier" and "priority" in info.value.message
    reply = client.chat.completions.create(model="deepseek-v4-flash", messages=MSG, service_tier="auto")
    assert reply.choices[0].message.content == "Hello there"


def test_unknown_model_is_404_with_suggestions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="deepseek-v4-flsh", messages=MSG)
    assert "deepseek-ai/DeepSeek-V4-Flash" in info.value.message
    assert info.value.code == "model_not_found"


def test_body_over_limit_is_413(gateway: GatewayProcess, api_key: str) -> None:
    big = {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = httpx.post(
        gateway.base_url + "/chat/completions", json=big, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("fault", "status", "fragment"),
    [
        ("server_error", 502, "HTTP 500"),
        ("unavailable", 502, "HTTP 503"),
        ("rate_limit", 502, "rate_limited"),
        ("reset", 502, "connection"),
        ("empty_choices", 502, "empty"),
        ("blank", 502, "empty"),
    ],
)
def test_upstream_failure_names_provider_and_cause(
    client: openai.OpenAI, gateway: GatewayProcess, fault: str, status: int, fragment: str
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="qwen3-8b", messages=MSG, extra_body={"sim": {"fault": fault}})
    assert info.value.status_code == status
    assert "Qwen/Qwen3-8B via sim" in info.value.message and fragment in info.value.message
    rows = records(gateway, info.value.response.headers["x-faregate-request-id"])
    assert len(rows) == 1 and rows[0]["status"] == status
    assert json.loads(rows[0]["attempts"])[0]["outcome"] != "ok"


@pytest.mark.parametrize("stream", [False, True])
def test_every_upstream_rate_limited_passes_its_retry_after_on(client: openai.OpenAI, stream: bool) -> None:
    """The upstream asked for 7 s (longer than the gateway waits itself, routing.max_retry_after_s):
    the client's 502 says so, and the SDK waits that long before its own retry; a failure that
    says nothing of capacity (a 500) carries no Retry-After."""
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="qwen3-8b",
            messages=MSG,
            stream=stream,
            extra_body={"sim": {"fault": "rate_limit", "retry_after_s": 7}},
        )
    assert info.value.status_code == 502 and "rate_limited" in info.value.message
    assert info.value.response.headers.get("retry-after") == "7"
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="qwen3-8b", messages=MSG, stream=stream, extra_body={"sim": {"fault": "server_error"}}
        )
    assert info.value.status_code == 502 and "retry-after" not in info.value.response.headers
    assert "x-should-retry" not in info.value.response.headers  # a 500 may pass: the SDK tries again


def sim_faults(sim: Any, model: str, fault: str) -> int:
    stats = httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()
    return int(stats["by_model"].get(model, {}).get("faults", {}).get(fault, 0))


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_refusing_the_gateways_key_is_not_retried_by_the_sdk(
    gateway: GatewayProcess, api_key: str, sim: Any, stream: bool
) -> None:
    """The provider refused the gateway's own key (a 401): the gateway does not ask it again, and
    its 502 says `x-should-retry: false`, so the SDK (which retries any 5xx, with its default
    max_retries=2) does not send the request three times, each one called (and billed) upstream."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key)  # the SDK's default retries
    before = sim_faults(sim, "Qwen/Qwen3-8B", "unauthorized")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="qwen3-8b", messages=MSG, stream=stream, extra_body={"sim": {"fault": "unauthorized"}}
        )
    assert info.value.status_code == 502 and "provider authentication failed" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert sim_faults(sim, "Qwen/Qwen3-8B", "unauthorized") - before == 1


def test_hanging_upstream_is_504_after_first_byte_timeout(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="qwen3-8b", messages=MSG, extra_body={"sim": {"fault": "hang", "hang_s": 30}}
        )
    assert info.value.status_code == 504 and "timeout" in info.value.message
    assert time.monotonic() - started < 10


def test_stream_cut_before_content_is_a_clean_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="qwen3-8b",
            messages=MSG,
            stream=True,
            extra_body={"sim": {"fault": "truncate", "after_tokens": 0}},
        )
    assert info.value.status_code == 502


def test_stream_cut_after_content_raises_in_the_sdk(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=MSG,
        stream=True,
        extra_body={"sim": {"fault": "truncate", "after_tokens": 3, "answer": {"lorem": 20}}},
    )
    seen = []
    with pytest.raises(openai.APIError, match="failed after content was sent"):
        for chunk in raw.parse():
            seen.append(chunk)
    assert seen, "content reached the client before the cut"
    row = records(gateway, raw.headers["x-faregate-request-id"])[0]
    assert row["status"] == 502 and row["completion_tokens"] > 0 and Decimal(row["cost_usd"]) > 0


def test_models_endpoint_lists_prices_and_availability(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    flash = models["deepseek-ai/DeepSeek-V4-Flash"]
    extra = flash.model_extra or {}
    assert Decimal(extra["pricing"]["input"]) == Decimal("0.27")
    assert Decimal(extra["pricing"]["output"]) == Decimal("1.10")
    assert extra["context_window"] == 128000 and extra["available"] is True
    assert "deepseek-v4-flash" in extra["aliases"]
    assert len(models) > 100
    # What a model is sent without, and the efforts it takes, as extra fields the SDK keeps.
    assert extra["efforts"] is None and extra["refused_params"] == []
    opus = models["claude-opus-4-5"].model_extra or {}
    assert opus["efforts"] == ["low", "medium", "high"] and opus["refused_params"] == []
    assert (models["gpt-4o-mini"].model_extra or {})["refused_params"] == ["reasoning_effort", "verbosity"]


def test_unknown_path_is_openai_shaped_404(gateway: GatewayProcess, api_key: str) -> None:
    response = httpx.get(gateway.base_url + "/nope", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 404 and "error" in response.json()
