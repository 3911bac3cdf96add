"""The chaos suite: the gateway against a misbehaving simulator, driven with the openai SDK.

The primary model fails often and in every way (429 with Retry-After, 5xx, empty 200s,
streams cut before content, hangs past the timeout); a healthy model from another
family is the fallback. The client must see no failure, every request must be recorded
exactly once with the attempt that served it, and the money must add up.

Anthropic's Messages wire too: a Claude model on the Anthropic provider (the simulator's
/v1/messages: 429 rate_limit_error, 529 overloaded_error, 500, empty content, event streams cut
before content) falls back to the same healthy model, for Messages streams from the anthropic SDK.

CHAOS_REQUESTS sets the size (2,000 here; `make chaos` runs 20,000); the Messages streams are a
quarter of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from faregate.catalog import build_catalog
from faregate.config import load_settings
from harness import MASTER_KEY, GatewayProcess, SimProcess, create_key, run_gateway, run_sim

pytestmark = pytest.mark.e2e

REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "2000"))
CONCURRENCY = 32
PRIMARY = "deepseek-ai/DeepSeek-V4-Flash"
FALLBACK = "THUDM/glm-4-plus"
# A Claude model served over the Messages wire by the Anthropic provider (the simulator's /v1/messages).
CLAUDE = "claude-chaos"
CLAUDE_PRICE = (Decimal(1), Decimal(5))

CHAOS_SCRIPT = f"""
seed: 11
defaults:
  answer: {{lorem: 24}}
models:
  {PRIMARY}:
    retry_after_s: 0
    hang_s: 30
    after_tokens: 0
    faults: {{rate_limit: 0.30, server_error: 0.05, unavailable: 0.05, empty_choices: 0.05, truncate: 0.05,
              hang: 0.02}}
  {CLAUDE}:
    retry_after_s: 0
    after_tokens: 0
    faults: {{rate_limit: 0.30, unavailable: 0.10, server_error: 0.05, empty_choices: 0.05, truncate: 0.05}}
  dead-model:
    faults: {{server_error: 1.0}}
  broken-a:
    faults: {{unavailable: 1.0}}
  broken-b:
    faults: {{reset: 1.0}}
"""

CHAOS_CONFIG = """
routing:
  retries: 1
  backoff_base_s: 0.005
  backoff_max_s: 0.02
  breaker: {consecutive_failures: 5, error_rate: 0.9, window: 50, min_calls: 50, cooldown_s: 0.5}
models:
  claude-chaos: {input: 1, output: 5, offers: [{provider: anthropic}]}
  dead-model: {input: 1, output: 1, offers: [{provider: sim}]}
  broken-a: {input: 1, output: 1, offers: [{provider: sim}]}
  broken-b: {input: 1, output: 1, offers: [{provider: sim}]}
routes:
  resilient: {chain: [deepseek-v4-flash, glm-4-plus]}
  messages-resilient: {chain: [claude-chaos, glm-4-plus]}
  deadfirst: {chain: [{model: dead-model, retries: 0}, glm-4-plus]}
  alldown: {chain: [broken-a, broken-b]}
  # The flaky primary first, judged: one route always accepts its answer, one never does.
  cascade-accepts:
    cascade: {steps: [deepseek-v4-flash, glm-4-plus], judge: {checks: [empty, truncated]}}
  cascade-escalates:
    cascade: {steps: [deepseek-v4-flash, glm-4-plus], judge: {checks: [empty], required_pattern: "^never$"}}
"""


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimProcess, GatewayProcess, str]]:
    with run_sim(tmp_path_factory.mktemp("chaos-sim"), CHAOS_SCRIPT) as sim:
        # The simulator also stands in for Anthropic (its /v1/messages), for claude-chaos.
        anthropic_at = f"providers:\n  anthropic: {{base_url: 'http://127.0.0.1:{sim.port}/v1'}}\n"
        with run_gateway(
            tmp_path_factory.mktemp("chaos-gw"),
            sim,
            CHAOS_CONFIG + anthropic_at,
            first_byte_timeout_s=0.5,
            env={"ANTHROPIC_API_KEY": "sk-ant-chaos"},
        ) as gateway:
            yield sim, gateway, create_key(gateway.store_path, "chaos")


def write_report(path: str, text: str) -> None:
    Path(path).write_text(text)


def sim_stats(sim: SimProcess) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{sim.port}/sim/stats").json()
    return stats


def wait_for_rows(db_path: Path, ids: list[str], timeout: float = 10.0) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db_path) as db:
            db.row_factory = sqlite3.Row
            rows: list[sqlite3.Row] = []
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += db.execute(
                    f"SELECT * FROM request_records WHERE request_id IN ({marks})", chunk
                ).fetchall()
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


async def one_request(client: openai.AsyncOpenAI, i: int, stream: bool) -> tuple[str, int, int, Decimal]:
    """Returns (request id, prompt tokens, completion tokens, cost) as the client saw them."""
    messages = [{"role": "user", "content": f"question number {i}: what is {i} + {i}?"}]
    if not stream:
        raw = await client.chat.completions.with_raw_response.create(model="resilient", messages=messages)
        reply = raw.parse()
        assert reply.choices[0].message.content, "a real answer"
        assert reply.usage is not None
        cost = Decimal(raw.headers["x-faregate-cost-usd"])
        return (
            raw.headers["x-faregate-request-id"],
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
            cost,
        )
    raw_stream = await client.chat.completions.with_raw_response.create(
        model="resilient", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage = [], None
    async for chunk in raw_stream.parse():
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(text).strip(), "a real answer"
    assert usage is not None
    cost = Decimal(str((usage.model_extra or {})["cost"]))
    return raw_stream.headers["x-faregate-request-id"], usage.prompt_tokens, usage.completion_tokens, cost


async def test_no_failure_reaches_the_client_and_money_adds_up(
    chaos: tuple[SimProcess, GatewayProcess, str],
) -> None:
    sim, gateway, key = chaos
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    rng = random.Random(5)
    streams = [rng.random() < 0.5 for _ in range(REQUESTS)]
    semaphore = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def bounded(i: int) -> tuple[str, int, int, Decimal] | None:
        async with semaphore:
            try:
                return await one_request(client, i, streams[i])
            except Exception as exc:  # every client-visible failure is collected and reported
                failures.append(f"{i}: {exc!r}")
                return None

    results = await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))
    assert failures == [], failures[:5]
    seen = [r for r in results if r is not None]
    ids = [r[0] for r in seen]
    assert len(set(ids)) == REQUESTS

    stats = sim_stats(sim)["by_model"][PRIMARY]["faults"]
    # Every kind of fault was dealt. The rare ones (hang 2%, cut 5% of the calls that reach the
    # primary, fewer while its breaker is open) need the suite's size: a quick run of a few
    # hundred requests (the documented `make chaos` quick form) may draw none.
    expected = {"rate_limit", "server_error", "unavailable", "empty_choices"}
    if REQUESTS >= 2000:
        expected |= {"truncate", "hang"}
    assert expected <= set(stats), stats

    rows = wait_for_rows(gateway.store_path / "faregate.db", ids)
    assert len(rows) == REQUESTS, "every request recorded exactly once"
    by_id = {row["request_id"]: row for row in rows}
    assert len(by_id) == REQUESTS

    prices = {m.name: m.list_price for m in build_catalog(load_settings()).all() if m.curated}
    fallbacks = 0
    for request_id, prompt_tokens, completion_tokens, client_cost in seen:
        row = by_id[request_id]
        assert row["status"] == 200
        attempts = json.loads(row["attempts"])
        assert attempts[-1]["outcome"] == "ok"
        assert attempts[-1]["model"] == row["model_used"] in (PRIMARY, FALLBACK)
        assert all(a["outcome"] != "ok" for a in attempts[:-1])
        fallbacks += row["model_used"] == FALLBACK
        # The money: served attempt's usage at its price, plus what failed attempts were billed.
        price = prices[row["model_used"]]
        served = (
            Decimal(row["prompt_tokens"]) * price.input + Decimal(row["completion_tokens"]) * price.output
        ) / (Decimal(1_000_000))
        billed = sum((Decimal(a["cost_usd"]) for a in attempts[:-1]), Decimal(0))
        assert Decimal(row["cost_usd"]) == served + billed
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt_tokens, completion_tokens)
        if row["stream"]:
            assert abs(Decimal(row["cost_usd"]) - client_cost) < Decimal("1e-12")
        else:
            assert Decimal(row["cost_usd"]) == client_cost
    assert fallbacks > REQUESTS * 0.1, "the fallback model did serve"
    report = os.environ.get("CHAOS_REPORT")
    if report:
        attempts_made = sum(len(json.loads(by_id[i]["attempts"])) for i in ids)
        write_report(
            report,
            json.dumps(
                {
                    "requests": REQUESTS,
                    "streaming": sum(streams),
                    "client_failures": len(failures),
                    "recorded_once": len(rows),
                    "served_by_fallback": fallbacks,
                    "upstream_attempts": attempts_made,
                    "faults_injected_on_primary": stats,
                    "recorded_cost_usd": str(sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))),
                },
                indent=2,
            ),
        )
    total_recorded = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        marks = ",".join("?" * len(ids[:900]))
        nano = db.execute(
            f"SELECT SUM(cost_nanousd) FROM request_records WHERE request_id IN ({marks})", ids[:900]
        ).fetchone()[0]
    assert Decimal(nano).scaleb(-9) == sum((Decimal(by_id[i]["cost_usd"]) for i in ids[:900]), Decimal(0))
    assert total_recorded > 0


def test_dead_primary_opens_its_breaker_and_stops_being_called(
    chaos: tuple[SimProcess, GatewayProcess, str],
) -> None:
    sim, gateway, key = chaos
    # Two keys: the breaker every key shares opens only on failures seen by several keys (one key's
    # failures open that key's own breaker alone: tests/test_tenant_isolation_e2e.py).
    clients = [
        openai.OpenAI(base_url=gateway.base_url, api_key=k, max_retries=0)
        for k in (key, create_key(gateway.store_path, "chaos-2"))
    ]
    for i in range(30):
        reply = clients[i % 2].chat.completions.create(
            model="deadfirst", messages=[{"role": "user", "content": f"hi {i}"}]
        )
        assert reply.model == FALLBACK
    calls = sim_stats(sim)["models"]["dead-model"]
    assert 5 <= calls < 15, (
        f"the breaker opened after 5 failures (then probes); dead-model was called {calls} times"
    )
    health = httpx.get(f"{gateway.base_url[:-3]}/health", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    offers = health.json()["offers"]
    assert offers["sim/dead-model"]["breaker"] in ("open", "half_open")


def test_all_candidates_down_is_one_clean_502_naming_each_attempt(
    chaos: tuple[SimProcess, GatewayProcess, str],
) -> None:
    _, gateway, key = chaos
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="alldown", messages=[{"role": "user", "content": "anyone?"}])
    assert time.monotonic() - started < 20
    assert info.value.status_code in (502, 503)
    message = info.value.message
    if info.value.status_code == 502:
        assert "broken-a via sim: server_error (HTTP 503)" in message
        assert "broken-b via sim: connection" in message
        assert info.value.response.headers["x-faregate-attempts"] == "4"


async def test_cascades_under_chaos_bill_every_call_exactly(
    chaos: tuple[SimProcess, GatewayProcess, str],
) -> None:
    """Judged steps on a provider that fails in every way: the client still gets one answer, and
    each record's cost is the served call plus every billed call before it (refused answers too)."""
    _, gateway, key = chaos
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    n = max(REQUESTS // 5, 40)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(i: int) -> str | None:
        route = "cascade-escalates" if i % 2 else "cascade-accepts"
        messages = [{"role": "user", "content": f"cascade question {i}"}]
        async with semaphore:
            try:
                if i % 4 < 2:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=route, messages=messages
                    )
                    assert raw.parse().choices[0].message.content
                    return str(raw.headers["x-faregate-request-id"])
                stream = await client.chat.completions.with_raw_response.create(
                    model=route, messages=messages, stream=True, stream_options={"include_usage": True}
                )
                text = [c.choices[0].delta.content or "" async for c in stream.parse() if c.choices]
                assert "".join(text).strip()
                return str(stream.headers["x-faregate-request-id"])
            except Exception as exc:
                failures.append(f"{i}: {exc!r}")
                return None

    prices = {m.name: m.list_price for m in build_catalog(load_settings()).all() if m.curated}

    async def one_round(start: int) -> int:
        """Send n requests, check every record; the number of escalations billed."""
        ids = [i for i in await asyncio.gather(*(one(i) for i in range(start, start + n))) if i is not None]
        assert failures == [], failures[:5]
        rows = wait_for_rows(gateway.store_path / "faregate.db", ids)
        assert len(rows) == n
        escalated = 0
        for row in rows:
            attempts = json.loads(row["attempts"])
            assert row["status"] == 200 and attempts[-1]["outcome"] == "ok"
            for attempt in attempts[:-1]:
                if attempt["outcome"] == "escalated":
                    escalated += 1
                    price = prices[attempt["model"]]
                    own = (
                        Decimal(attempt["prompt_tokens"]) * price.input
                        + Decimal(attempt["completion_tokens"]) * price.output
                    ) / Decimal(1_000_000)
                    assert Decimal(attempt["cost_usd"]) == own > 0
            if row["route"] == "cascade-escalates":
                # Never accepted: the answer comes from the last step unless the first step failed outright.
                assert row["model_used"] == FALLBACK
            price = prices[row["model_used"]]
            served = (
                Decimal(row["prompt_tokens"]) * price.input + Decimal(row["completion_tokens"]) * price.output
            ) / Decimal(1_000_000)
            billed = sum((Decimal(a["cost_usd"]) for a in attempts[:-1]), Decimal(0))
            assert Decimal(row["cost_usd"]) == served + billed
        # Fewer than half the escalating requests escalate: the primary's breaker is often open, and
        # then the cheap step is left out of the plan altogether (no call, nothing to judge).
        return escalated

    # Under load the primary's breaker can stay open through a whole round (then the cheap step is
    # left out of the plan: nothing to judge); a few rounds give it time to half-open.
    escalated = 0
    for start in range(0, 3 * n, n):
        escalated += await one_round(start)
        if escalated:
            break
    assert escalated > 0, "the escalating route did escalate, and its refused answers were billed"


async def test_messages_streams_fall_back_from_every_claude_failure(
    chaos: tuple[SimProcess, GatewayProcess, str],
) -> None:
    """Messages streams from the anthropic SDK to a Claude model that fails in every way the
    Messages wire can (429, 529 overloaded_error, 500, empty content, a stream cut before its
    content): the client always gets one whole stream, each request is recorded once with the
    wire it came in on, and its cost is the served call at its price plus what failed calls billed."""
    sim, gateway, key = chaos
    client = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{gateway.port}", api_key=key, max_retries=0, timeout=30
    )
    n = max(REQUESTS // 4, 100)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(i: int) -> tuple[str, Decimal] | None:
        async with semaphore:
            try:
                raw = await client.messages.with_raw_response.create(
                    model="messages-resilient",
                    max_tokens=200,
                    messages=[{"role": "user", "content": f"messages question {i}"}],
                    stream=True,
                )
                events = [event async for event in await raw.parse()]
                kinds = [event.type for event in events]
                assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
                text = "".join(
                    e.delta.text
                    for e in events
                    if e.type == "content_block_delta" and e.delta.type == "text_delta"
                )
                assert text.strip(), "a real answer"
                usage = events[-2].usage  # type: ignore[union-attr]
                return raw.headers["x-faregate-request-id"], Decimal(str((usage.model_extra or {})["cost"]))
            except Exception as exc:  # every client-visible failure is collected and reported
                failures.append(f"{i}: {exc!r}")
                return None

    seen = [r for r in await asyncio.gather(*(one(i) for i in range(n))) if r is not None]
    assert failures == [], failures[:5]
    faults = sim_stats(sim)["by_model"][CLAUDE]["faults"]
    assert {"rate_limit", "unavailable", "server_error", "empty_choices", "truncate"} <= set(faults)
    rows = wait_for_rows(gateway.store_path / "faregate.db", [r[0] for r in seen])
    assert len(rows) == n, "every request recorded exactly once"
    by_id = {row["request_id"]: row for row in rows}
    prices = {m.name: (m.list_price.input, m.list_price.output) for m in build_catalog(load_settings()).all()}
    prices[CLAUDE] = CLAUDE_PRICE
    served_by = {CLAUDE: 0, FALLBACK: 0}
    for request_id, client_cost in seen:
        row = by_id[request_id]
        assert row["status"] == 200 and row["wire"] == "messages" and row["stream"] == 1
        attempts = json.loads(row["attempts"])
        assert attempts[-1]["outcome"] == "ok" and all(a["outcome"] != "ok" for a in attempts[:-1])
        served_by[row["model_used"]] += 1
        price_in, price_out = prices[row["model_used"]]
        served = (
            Decimal(row["prompt_tokens"]) * price_in + Decimal(row["completion_tokens"]) * price_out
        ) / (Decimal(1_000_000))
        billed = sum((Decimal(a["cost_usd"]) for a in attempts[:-1]), Decimal(0))
        assert Decimal(row["cost_usd"]) == served + billed
        assert abs(Decimal(row["cost_usd"]) - client_cost) < Decimal("1e-12")
    assert served_by[CLAUDE] > 0 and served_by[FALLBACK] > 0, served_by
