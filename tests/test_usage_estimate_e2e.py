"""End to end: usage no upstream reported, counted without the tokenizer by default.

A real gateway on the simulator: a stream cut after content and a stream whose client leaves are
billed the light estimate, marked estimated; count_tokens answers the same count; and the
gateway process never imports tiktoken (its admin /health says so). With
`accounts.usage_estimate: tokenizer` the counts are o200k's, and `serve --workers 2` has loaded
it in the supervisor before forking: every worker has it before its first request.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from faregate import counting, light_tokens, tokens
from faregate.wire.anthropic import messages_to_chat
from harness import MASTER_KEY, GatewayProcess, SimProcess, create_key, stored_record
from servers import launch_gateway

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Tell me about the gateway's estimates, please."}]
CUT = {"sim": {"fault": "truncate", "after_tokens": 6, "answer": {"lorem": 40}}}
RELAXED = "routing: {breaker: {consecutive_failures: 1000000, min_calls: 1000000}}\n"


def health(gateway: GatewayProcess) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/health", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def cut_stream(gateway: GatewayProcess, key: str) -> tuple[sqlite3.Row, str, int]:
    """A stream the upstream cuts after content: its record, the text the client got and its
    content deltas."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b", messages=MSG, stream=True, extra_body=CUT
    )
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="failed after content was sent"):
        for chunk in raw.parse():
            pieces.extend(c.delta.content for c in chunk.choices if c.delta.content)
    return stored_record(gateway, raw.headers["x-faregate-request-id"]), "".join(pieces), len(pieces)


@pytest.fixture(scope="module")
def light_gateway(
    sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    # One gateway for the module's light-estimate checks: neither loads the tokenizer.
    with launch_gateway(tmp_path_factory.mktemp("light") / "gw", sim, extra=RELAXED) as gateway:
        yield gateway, create_key(gateway.store_path, "estimates")


def test_a_cut_stream_is_billed_the_light_estimate_without_the_tokenizer(
    light_gateway: tuple[GatewayProcess, str],
) -> None:
    gateway, key = light_gateway
    row, text, deltas = cut_stream(gateway, key)
    assert row["status"] == 502 and row["usage_estimated"] == 1
    assert row["prompt_tokens"] == counting.count_input({"messages": MSG}, light_tokens.count_text)
    assert row["completion_tokens"] == max(deltas, light_tokens.count_text(text))
    assert deltas == 6
    state = health(gateway)["usage_estimate"]
    assert state == {"mode": "light", "tokenizer_imported": False, "tokenizer_loaded": False}


def test_a_stream_whose_client_left_is_estimated_and_count_tokens_uses_the_same_count(
    light_gateway: tuple[GatewayProcess, str],
) -> None:
    gateway, key = light_gateway
    headers = {"Authorization": f"Bearer {key}"}
    # A slow answer: the client reads its first content and hangs up.
    body = {
        "model": "qwen3-8b",
        "messages": MSG,
        "stream": True,
        "sim": {"answer": {"lorem": 400}, "tokens_per_s": 50, "fault": "none"},
    }
    with httpx.Client(timeout=30) as http:
        with http.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
        ) as answer:
            request_id = answer.headers["x-faregate-request-id"]
            for line in answer.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break
        row = stored_record(gateway, request_id)
        assert row["usage_estimated"] == 1 and row["completion_tokens"] >= 1
        assert row["prompt_tokens"] == counting.count_input({"messages": MSG}, light_tokens.count_text)

        ask = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": MSG}
        counted = http.post(f"{gateway.base_url}/messages/count_tokens", json=ask, headers=headers).json()
    chat = messages_to_chat(ask, count_only=True)
    assert counted == {"input_tokens": counting.count_input(chat, light_tokens.count_text)}
    assert health(gateway)["usage_estimate"]["tokenizer_imported"] is False


def test_opted_in_the_tokenizer_is_loaded_before_the_workers_fork_and_counts_exactly(
    sim: SimProcess, tmp_path: Path
) -> None:
    opted = RELAXED + "accounts: {usage_estimate: tokenizer}\n"
    with launch_gateway(tmp_path / "gw", sim, server="workers: 2", extra=opted) as gateway:
        # Before any request: each worker has it from the supervisor (pages shared, not loaded twice).
        # The second worker may still be starting: ask on new connections until both have answered.
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                answer = health(gateway)
            except OSError:
                continue
            seen[answer["pid"]] = answer["usage_estimate"]
        assert len(seen) == 2, seen
        assert all(
            s == {"mode": "tokenizer", "tokenizer_imported": True, "tokenizer_loaded": True}
            for s in seen.values()
        )
        key = create_key(gateway.store_path, "exact")
        row, text, deltas = cut_stream(gateway, key)
    assert row["usage_estimated"] == 1
    assert row["prompt_tokens"] == tokens.count_messages(MSG)
    assert row["completion_tokens"] == max(deltas, tokens.count_text(text))


def test_the_default_serving_path_imports_no_tokenizer_in_process() -> None:
    """A fresh interpreter: the gateway's modules, a prompt counted past its bound, a count_tokens
    answer, an estimate and the supervisor's preload; tiktoken is never imported (other tests
    import it into the test process, hence a new one)."""
    script = """
import asyncio, sys
from faregate.server import app, workers
from faregate.config import parse_settings
from faregate import usage_estimate
from faregate.routing.estimate import PromptSize
from faregate.types import ChatRequest
from faregate.wire.anthropic import count_tokens

async def main():
    size = PromptSize.of({"messages": [{"role": "user", "content": "word " * 50}]})
    assert not await size.at_most(10)
    await count_tokens({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    request = ChatRequest("r", {"messages": []}, "m", True, False, None, frozenset())
    assert (await usage_estimate.estimate_usage(request, "some text", 3)).estimated
    workers.preload(parse_settings({}))
    print("tiktoken" in sys.modules, "faregate.tokens" in sys.modules, usage_estimate.state())

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False"), out
    assert "'tokenizer_loaded': False" in out
