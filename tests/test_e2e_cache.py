"""The exact cache through the gateway, with the openai SDK: hits, stream replay, isolation, money."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal

import httpx
import openai
import pytest

from harness import GatewayProcess, SimProcess, cache_written, create_key, wait_until

pytestmark = pytest.mark.e2e


def ask(client: openai.OpenAI, text: str, **kwargs: object) -> openai.APIResponse:  # type: ignore[type-arg]
    return client.chat.completions.with_raw_response.create(  # type: ignore[call-overload,no-any-return]
        model="qwen3-8b", messages=[{"role": "user", "content": text}], temperature=0, **kwargs
    )


def sim_requests(sim: SimProcess) -> int:
    return int(httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()["requests"])


def row(gateway: GatewayProcess, request_id: str) -> sqlite3.Row:
    deadline = time.monotonic() + 3
    while True:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM request_records WHERE request_id = ?", (request_id,)).fetchone()
        if found is not None or time.monotonic() > deadline:
            assert found is not None
            return found  # type: ignore[no-any-return]
        time.sleep(0.05)


@pytest.fixture()
def client(gateway: GatewayProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)


def test_second_identical_request_is_a_free_hit(
    client: openai.OpenAI, gateway: GatewayProcess, sim: SimProcess
) -> None:
    with cache_written(gateway):
        first = ask(client, "cache me 1")
    assert first.headers["x-faregate-cache"] == "miss"
    before = sim_requests(sim)
    second = ask(client, "cache me 1")
    assert sim_requests(sim) == before, "a hit never reaches the upstream"
    assert second.headers["x-faregate-cache"] == "hit"
    assert second.headers["x-faregate-cost-usd"] == "0"
    reply = second.parse()
    assert reply.choices[0].message.content == first.parse().choices[0].message.content
    assert reply.usage is not None and reply.usage.model_extra["cost"] == 0  # type: ignore[index]
    record = row(gateway, second.headers["x-faregate-request-id"])
    assert record["cache_status"] == "hit" and Decimal(record["cost_usd"]) == 0
    assert Decimal(record["baseline_cost_usd"]) > 0, "the whole baseline counts as saved"


def test_streaming_hit_is_replayed_as_sse(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with cache_written(gateway):
        ask(client, "cache me 2")
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=[{"role": "user", "content": "cache me 2"}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-faregate-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "cache me 2"
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["cost"] == 0  # type: ignore[index]


def test_a_streamed_answer_serves_a_later_request(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with cache_written(gateway):
        stream = client.chat.completions.create(
            model="qwen3-8b", messages=[{"role": "user", "content": "cache me 3"}], temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "cache me 3"
    again = ask(client, "cache me 3")
    assert again.headers["x-faregate-cache"] == "hit"
    assert again.parse().choices[0].message.content == "cache me 3"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_a_streamed_tool_call_is_kept_as_a_whole_one_is(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    """Whole answers with tool calls are kept (README, Caching), so streamed ones are too: the
    next request, whole or streamed, is served the same calls free."""
    asked: dict[str, object] = {
        "model": "qwen3-8b",
        "messages": [{"role": "user", "content": "weather, streamed first"}],
        "temperature": 0,
        "tools": TOOLS,
        "extra_body": {"sim": {"tool_call": True}},
    }
    with cache_written(gateway):
        streamed = client.chat.completions.create(**asked, stream=True)  # type: ignore[call-overload]
        calls = [
            (call.index, call.id, call.function.name, call.function.arguments)
            for c in streamed
            if c.choices
            for call in c.choices[0].delta.tool_calls or ()
        ]
    whole = client.chat.completions.with_raw_response.create(**asked)  # type: ignore[call-overload]
    assert whole.headers["x-faregate-cache"] == "hit"
    message = whole.parse().choices[0].message
    assert whole.parse().choices[0].finish_reason == "tool_calls"
    first = calls[0]
    assert [(c.id, c.function.name) for c in message.tool_calls] == [(first[1], first[2])]
    assert message.tool_calls[0].function.arguments == "".join(str(c[3] or "") for c in calls)
    again = client.chat.completions.with_raw_response.create(**asked, stream=True)  # type: ignore[call-overload]
    assert again.headers["x-faregate-cache"] == "hit"
    replayed = [call for c in again.parse() if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(c.id, c.function.name) for c in replayed] == [(first[1], first[2])]


def test_keys_never_share_entries_unless_asked(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    other = openai.OpenAI(
        base_url=gateway.base_url, api_key=create_key(gateway.store_path, "other"), max_retries=0
    )
    with cache_written(gateway):
        ask(client, "private question")
    assert ask(other, "private question").headers["x-faregate-cache"] == "miss"
    shared = {"extra_body": {"faregate": {"cache": {"namespace": "shared"}}}}
    with cache_written(gateway):
        ask(client, "public question", **shared)
    assert ask(other, "public question", **shared).headers["x-faregate-cache"] == "hit"


def test_bypass_no_store_no_cache_and_ttl(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    hot = client.chat.completions.with_raw_response.create(
        model="qwen3-8b", messages=[{"role": "user", "content": "warm"}], temperature=0.8
    )
    assert hot.headers["x-faregate-cache"] == "bypass"
    with cache_written(gateway):
        ask(client, "cc")
    assert (
        ask(client, "cc", extra_headers={"Cache-Control": "no-store"}).headers["x-faregate-cache"] == "bypass"
    )
    assert (
        ask(client, "cc", extra_headers={"Cache-Control": "no-cache"}).headers["x-faregate-cache"] == "miss"
    )
    # Long enough to be read back on a busy machine; then it expires.
    short = {"extra_body": {"faregate": {"cache": {"ttl_s": 2}}}}
    with cache_written(gateway):
        ask(client, "brief", **short)
    assert ask(client, "brief", **short).headers["x-faregate-cache"] == "hit"
    wait_until(
        lambda: ask(client, "brief", **short).headers["x-faregate-cache"] == "miss", "the entry expires"
    )


def test_different_parameters_do_not_hit(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    with cache_written(gateway):
        ask(client, "params")
    assert ask(client, "params", max_tokens=3).headers["x-faregate-cache"] == "miss"
    assert ask(client, "params", seed=4).headers["x-faregate-cache"] == "miss"


def test_a_streamed_answer_of_several_choices_is_not_kept_as_one(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    """A stream's chunks carry every choice by index: the cache must not keep them as one merged
    choice and serve that to a later request that asked for two."""
    forced = {"extra_body": {"faregate": {"cache": True}}}
    stream = client.chat.completions.create(
        model="qwen3-8b", messages=[{"role": "user", "content": "two ways"}], n=2, stream=True, **forced
    )
    texts: dict[int, str] = {}
    for c in stream:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: "two ways", 1: "two ways"}
    again = client.chat.completions.with_raw_response.create(
        model="qwen3-8b", messages=[{"role": "user", "content": "two ways"}], n=2, **forced
    )
    reply = again.parse()
    if again.headers["x-faregate-cache"] == "hit":
        assert [c.message.content for c in reply.choices] == ["two ways", "two ways"]
    assert len(reply.choices) == 2
