"""What the baseline model would have cost, told to the client: `usage.baseline_cost` beside
`usage.cost` on every wire (whole answers, the final usage of a stream) and the
`x-faregate-baseline-cost-usd` header beside `x-faregate-cost-usd`, always the figure the request
is recorded with (the in-process harness of tests/test_pipeline.py: a fake Provider, everything
else real; its baseline model is priced at 100 USD per 1M tokens in and out)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from faregate.errors import UpstreamFailure
from faregate.server.exchange import money
from faregate.types import JSON, Price, RequestRecord, Usage
from test_client_wires import MESSAGE, events
from test_pipeline import ASK, WHOLE_STREAM, Harness, answer, harness, sse_chunks

__all__ = ["harness"]  # the fixture, imported

BASELINE = Price(Decimal(100), Decimal(100))


def told(usage: JSON, record: RequestRecord) -> None:
    """The usage object says the record's cost and baseline cost, in usage.cost's form."""
    assert usage["cost"] == float(record.cost_usd)
    assert usage["baseline_cost"] == float(record.baseline_cost_usd)


def headed(headers: dict[str, str], record: RequestRecord) -> None:
    assert headers["x-faregate-cost-usd"] == money(record.cost_usd)
    assert headers["x-faregate-baseline-cost-usd"] == money(record.baseline_cost_usd)


async def test_a_whole_chat_answer_says_its_baseline_cost_in_the_body_and_a_header(harness: Harness) -> None:
    status, headers, raw = await harness.post({"model": "cheap", **ASK})
    assert status == 200
    (record,) = harness.records
    assert record.baseline_cost_usd == BASELINE.cost(Usage(10, 2)) == Decimal("0.0012")
    told(orjson.loads(raw)["usage"], record)
    headed(headers, record)
    assert headers["x-faregate-baseline-cost-usd"] == "0.0012"


async def test_a_streams_usage_chunk_says_its_baseline_cost(harness: Harness) -> None:
    ask: JSON = {"model": "cheap", "stream": True, "stream_options": {"include_usage": True}, **ASK}
    status, _, raw = await harness.post(ask)
    assert status == 200
    *_, last, done = sse_chunks(raw)
    assert done == b"[DONE]"
    told(last["usage"], harness.records[-1])
    assert harness.records[-1].baseline_cost_usd == BASELINE.cost(Usage(10, 2))


async def test_an_estimated_stream_says_the_baseline_of_the_estimate(harness: Harness) -> None:
    harness.a.outcomes = [WHOLE_STREAM[:-1]]  # no usage from the upstream: the gateway counts
    ask: JSON = {"model": "cheap", "stream": True, "stream_options": {"include_usage": True}, **ASK}
    _, _, raw = await harness.post(ask)
    usage = sse_chunks(raw)[-2]["usage"]
    record = harness.records[-1]
    assert usage["estimated"] is True and record.usage_estimated and record.baseline_cost_usd > 0
    told(usage, record)


async def test_a_fallback_says_the_baseline_of_the_answer_served(harness: Harness) -> None:
    harness.a.outcomes = [UpstreamFailure("server_error", "HTTP 500")]
    harness.b.outcomes = [answer(usage=Usage(30, 7))]
    status, headers, raw = await harness.post({"model": "pair", **ASK})
    assert status == 200 and headers["x-faregate-provider"] == "b"
    record = harness.records[-1]
    assert record.baseline_cost_usd == BASELINE.cost(Usage(30, 7))
    told(orjson.loads(raw)["usage"], record)
    headed(headers, record)


async def test_a_cache_hit_costs_nothing_and_says_what_the_baseline_would_have(harness: Harness) -> None:
    ask: JSON = {"model": "cheap", "temperature": 0, **ASK}
    await harness.post(ask)
    await harness.cached()
    status, headers, raw = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    record = harness.records[-1]
    assert record.cost_usd == 0 and record.baseline_cost_usd == BASELINE.cost(Usage(10, 2))
    told(orjson.loads(raw)["usage"], record)
    headed(headers, record)
    streamed: JSON = {**ask, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = await harness.post(streamed)
    assert headers["x-faregate-cache"] == "hit"
    told(sse_chunks(raw)[-2]["usage"], harness.records[-1])
    headed(headers, harness.records[-1])


async def test_a_cascade_says_the_baseline_of_the_step_that_answered(harness: Harness) -> None:
    harness.a.outcomes = [answer("I cannot say.")]  # no final number: escalated to the strong model
    harness.b.outcomes = [answer("6 times 7 is 42. The answer is 42", Usage(10, 9))]
    status, headers, raw = await harness.post({"model": "cascade", **ASK})
    assert status == 200 and headers["x-faregate-cascade"].startswith("escalated")
    record = harness.records[-1]
    assert record.baseline_cost_usd == BASELINE.cost(Usage(10, 9))
    told(orjson.loads(raw)["usage"], record)
    headed(headers, record)


async def test_a_message_says_its_baseline_cost_whole_and_streamed(harness: Harness) -> None:
    status, headers, raw = await harness.post({"model": "cheap", **MESSAGE}, path="/v1/messages")
    assert status == 200
    told(orjson.loads(raw)["usage"], harness.records[-1])
    headed(headers, harness.records[-1])
    _, _, raw = await harness.post({"model": "cheap", "stream": True, **MESSAGE}, path="/v1/messages")
    delta = [e for e in events(raw) if e["type"] == "message_delta"]
    told(delta[-1]["usage"], harness.records[-1])


async def test_a_response_says_its_baseline_cost_whole_and_streamed(harness: Harness) -> None:
    asked: dict[str, Any] = {"model": "cheap", "input": "What is 6 times 7?"}
    status, headers, raw = await harness.post(asked, path="/v1/responses")
    assert status == 200
    told(orjson.loads(raw)["usage"], harness.records[-1])
    headed(headers, harness.records[-1])
    _, _, raw = await harness.post({**asked, "stream": True}, path="/v1/responses")
    completed = events(raw)[-1]
    assert completed["type"] == "response.completed"
    told(completed["response"]["usage"], harness.records[-1])
