"""End to end: an upstream stream that stalls after its head, with the official openai SDK.

The simulator's `stall` fault sends the head and some content tokens, then nothing for `hang_s`
(30 s here, and the request's deadline is 20 s). The gateway's per-provider idle timeout between
chunks (`stream_idle_timeout_s`, 0.5 s here) ends the attempt: before any content it falls back
to the next candidate, invisibly; after content it ends the stream with the error event, billing
what was relayed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from harness import GatewayProcess, create_key, run_gateway, run_sim, stored_record

pytestmark = pytest.mark.e2e

SCRIPT = """
defaults: {ttft_ms: 5, tokens_per_s: 0, answer: {lorem: 20}}
models:
  stalling-model: {faults: {stall: 1.0}, hang_s: 30, after_tokens: 0}
"""

CONFIG = """
routing: {retries: 1, breaker: {consecutive_failures: 1000, min_calls: 1000}}
models:
  stalling-model: {input: 1, output: 1, offers: [{provider: sim}]}
routes:
  stall-then-healthy: {chain: [stalling-model, qwen3-8b]}
"""

MSG = [{"role": "user", "content": "Hello there"}]
QWEN = "Qwen/Qwen3-8B"  # the catalog's name for qwen3-8b


@pytest.fixture(scope="module")
def stalls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, openai.OpenAI]]:
    with run_sim(tmp_path_factory.mktemp("stall-sim"), SCRIPT) as sim:
        workdir = tmp_path_factory.mktemp("stall-gw")
        # The sim section's timeouts are the simulated provider's (providers/registry.py).
        with run_gateway(workdir, sim, CONFIG, stream_idle_timeout_s=0.5) as gateway:
            key = create_key(gateway.store_path, "stalls")
            yield gateway, openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=25)


def test_a_stream_stalled_before_content_falls_back(stalls: tuple[GatewayProcess, Any]) -> None:
    gateway, client = stalls
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="stall-then-healthy", messages=MSG, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text and time.monotonic() - started < 10  # not the 30 s stall, nor the 20 s deadline
    row = stored_record(gateway, raw.headers["x-faregate-request-id"])
    assert row["status"] == 200 and row["model_used"] == QWEN
    attempts = json.loads(row["attempts"])
    # The stall is a timeout: not retried on the stalling offer, the next candidate serves.
    assert [(a["model"], a["outcome"]) for a in attempts] == [("stalling-model", "timeout"), (QWEN, "ok")]
    assert attempts[0]["detail"].startswith("stream stalled: nothing received for 0.5s")


def test_a_stream_stalled_after_content_ends_with_the_error_event_and_is_billed(
    stalls: tuple[GatewayProcess, Any],
) -> None:
    gateway, client = stalls
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=MSG,
        stream=True,
        extra_body={"sim": {"fault": "stall", "after_tokens": 3, "hang_s": 30}},
    )
    seen = []
    with pytest.raises(openai.APIError, match="failed after content was sent: stream stalled"):
        for chunk in raw.parse():
            seen.append(chunk)
    assert seen, "content reached the client before the stall"
    assert time.monotonic() - started < 10
    row = stored_record(gateway, raw.headers["x-faregate-request-id"])
    assert row["status"] == 502 and row["completion_tokens"] > 0 and Decimal(row["cost_usd"]) > 0
    assert json.loads(row["attempts"])[-1]["outcome"] == "timeout"
