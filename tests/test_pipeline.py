"""The request pipeline in process: a fake Provider at the Provider seam, everything else real
(parsing, the cache, the planner, the attempt loop, the cascade runner, the responder) but the
key store, the admission and the record writer, which record what they are asked.

Covers the core path without a process: a whole answer, a fallback, a stream (whole, cut short,
its client gone), a cache hit, a cascade, the error paths; and for each request the order of the
stages, that a hold is settled or released, and that exactly one record is written."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faregate.accounts.admission import Hold
from faregate.accounts.keys import ApiKey
from faregate.cache.factory import build_cache
from faregate.catalog import build_catalog
from faregate.config import parse_settings
from faregate.errors import RateLimited, UpstreamFailure, UpstreamRejected
from faregate.providers.base import UpstreamCall
from faregate.providers.registry import ProviderRegistry
from faregate.quality.verifier import Verifier
from faregate.routing.attempts import AttemptRunner
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Plan, Planner
from faregate.server.exchange import money
from faregate.server.http_seam import Whole
from faregate.server.pipeline import ChatPipeline
from faregate.server.wire_routes import add_wire_routes
from faregate.store.rows import attempts_json, usd_text
from faregate.types import JSON, ChatRequest, Completion, Price, RequestRecord, Usage
from test_routing import PROVIDERS, model

KEY = "fg-test-key"
MODELS = {
    "cheap": model("1", offers=[{"provider": "a"}], aliases=["vendor/Cheap-1"]),
    "strong": model("10", offers=[{"provider": "b"}]),
}
ROUTES = {
    "pair": {"chain": ["cheap", "strong"]},
    "cascade": {"cascade": {"steps": ["cheap", "strong"], "judge": {"checks": ["empty", "final_number"]}}},
    # Streams go to the strong model, whole answers to the cheap one.
    "by-stream": {"rules": [{"when": {"stream": True}, "use": ["strong"]}], "chain": ["cheap"]},
}
ASK = {"messages": [{"role": "user", "content": "What is 6 times 7?"}]}


def answer(text: str = "42", usage: Usage | None = None) -> Completion:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-name",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    return Completion(body, usage or Usage(10, 2))


def chunk(delta: JSON, finish: str | None = None) -> JSON:
    return {
        "id": "c",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


WHOLE_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "4"}),
    chunk({"content": "2"}),
    chunk({}, "stop"),
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
]


class FakeProvider:
    """Plays back outcomes: a Completion, a list of chunks (a stream), or an exception."""

    def __init__(self, name: str, events: list[str], outcomes: list[Any] | None = None) -> None:
        self.name = name
        # Fields beyond the chat wire it can carry (Provider.carries): none, as an OpenAI-wire upstream.
        self.carries: frozenset[str] = frozenset()
        self.events = events
        self.outcomes = outcomes or []
        self.calls: list[UpstreamCall] = []

    def _next(self, call: UpstreamCall) -> Any:
        self.calls.append(call)
        self.events.append(f"upstream {self.name}")
        return self.outcomes.pop(0) if self.outcomes else (WHOLE_STREAM if call.stream else answer())

    async def complete(self, call: UpstreamCall) -> Completion:
        outcome = self._next(call)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Completion)
        return outcome

    async def stream(self, call: UpstreamCall) -> AsyncIterator[JSON]:
        outcome = self._next(call)
        if isinstance(outcome, Exception):
            raise outcome
        for item in outcome:
            if isinstance(item, Exception):
                raise item
            yield orjson.loads(orjson.dumps(item))  # a fresh dict per call, as a parser gives

    async def close(self) -> None:
        pass


class FakeKeys:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def known(self, raw: str) -> ApiKey | None:
        return None  # the cache knows nothing: every stage list below shows `verify`

    async def verify(self, raw: str) -> ApiKey | None:
        self.events.append("authenticate")
        return ApiKey("key_1", "test", raw[:6], False, 0.0) if raw == KEY else None


class FakeAdmission:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.holds: list[Hold] = []
        self.refuse_hits = False

    async def admit(self, key: ApiKey, request: ChatRequest, worst_usd: Decimal, tokens: int) -> Hold:
        self.events.append("reserve")
        hold = Hold(key.id, worst_usd, tokens, headers={"x-ratelimit-remaining-requests": "9"})
        self.holds.append(hold)
        return hold

    async def settle(self, hold: Hold, cost_usd: Decimal, tokens: int) -> None:
        self.events.append(f"settle {cost_usd} {tokens}")

    async def release(self, hold: Hold) -> None:
        self.events.append("release")

    async def count_hit(self, key: ApiKey, request: ChatRequest) -> dict[str, str]:
        self.events.append("rate limit")
        if self.refuse_hits:
            raise RateLimited("Too many requests.")
        return {"x-ratelimit-remaining-requests": "8"}


class FakeRecords:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.records: list[RequestRecord] = []

        # The writer's backpressure (telemetry/records.py): set to have requests wait for room.
        self.backlogged = False

    def submit(self, record: RequestRecord) -> None:
        self.events.append("record")
        self.records.append(record)

    async def room(self) -> None:
        self.events.append("wait for room")
        self.backlogged = False


def spy(events: list[str], name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def spied(*args: Any, **kwargs: Any) -> Any:
        events.append(name)
        return await call(*args, **kwargs)

    return spied


def spy_sync(events: list[str], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def spied(*args: Any, **kwargs: Any) -> Any:
        events.append(name)
        return call(*args, **kwargs)

    return spied


class Harness:
    def __init__(self, client: TestClient, pipeline: ChatPipeline, events: list[str]) -> None:
        self.client = client
        self.pipeline = pipeline
        self.events = events
        self.a: FakeProvider = pipeline.runner.providers.get("a")  # type: ignore[assignment]
        self.b: FakeProvider = pipeline.runner.providers.get("b")  # type: ignore[assignment]

    @property
    def records(self) -> list[RequestRecord]:
        return self.pipeline.records.records  # type: ignore[attr-defined, no-any-return]

    @property
    def admission(self) -> FakeAdmission:
        return self.pipeline.admission  # type: ignore[return-value]

    async def post(
        self,
        body: JSON,
        key: str = KEY,
        path: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self.events.clear()
        before = len(self.records)
        response = await self.client.post(
            path,
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}"} if headers is None else headers,
        )
        raw = await response.read()
        assert len(self.records) == before + 1, "exactly one record per request"
        return response.status, dict(response.headers), raw

    async def cached(self) -> None:
        """Wait until the cache has stored an answer (it is stored in the background: up to 5 s)."""
        cache = self.pipeline.cache
        assert cache is not None
        for _ in range(500):
            if cache.writes:
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    settings = parse_settings(
        {
            "providers": PROVIDERS,
            "models": MODELS,
            "routes": ROUTES,
            "catalog": {"broad": False},
            "routing": {"retries": 0, "backoff_base_s": 0.001, "backoff_max_s": 0.002},
        }
    )
    events: list[str] = []
    providers = {"a": FakeProvider("a", events), "b": FakeProvider("b", events)}
    health = HealthBoard(settings.routing.breaker)
    planner = Planner(build_catalog(settings), settings.routes, settings.routing, health)
    runner = AttemptRunner(ProviderRegistry.of(providers), 5.0, settings.routing, health)
    cache = build_cache(settings.cache)
    assert cache is not None
    pipeline = ChatPipeline(
        keys=FakeKeys(events),  # type: ignore[arg-type]
        planner=planner,
        runner=runner,
        records=FakeRecords(events),  # type: ignore[arg-type]
        max_body_bytes=1 << 20,
        baseline=Price(Decimal(100), Decimal(100)),
        admission=FakeAdmission(events),
        cache=cache,
    )
    # The cache stage: its decision always (a bypass is not looked up: nothing to wait for).
    cache.decide = spy_sync(events, "cache lookup", cache.decide)  # type: ignore[method-assign]
    planner.plan = spy(events, "plan", planner.plan)  # type: ignore[method-assign]
    # The usual request's plan (`plan_now`) is the same stage: "plan" when it gives one.
    plan_now = planner.plan_now

    def spied_plan_now(request: ChatRequest) -> Plan | None:
        plan = plan_now(request)
        if plan is not None:
            events.append("plan")
        return plan

    planner.plan_now = spied_plan_now  # type: ignore[method-assign]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", pipeline.handle)
    add_wire_routes(app, pipeline)  # /v1/messages and /v1/responses (tests/test_client_wires.py)
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, pipeline, events)
    await cache.close()


def sse_chunks(raw: bytes) -> list[Any]:
    frames = [line.removeprefix(b"data: ") for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    return [frame if frame == b"[DONE]" else orjson.loads(frame) for frame in frames]


# -- the stages and their order -------------------------------------------------------------------


async def test_a_whole_answer_passes_every_stage_in_order(harness: Harness) -> None:
    status, headers, raw = await harness.post({"model": "cheap", **ASK})
    assert status == 200
    body = orjson.loads(raw)
    cost = Price(Decimal(1), Decimal(1)).cost(Usage(10, 2))
    assert body["model"] == "cheap" and body["choices"][0]["message"]["content"] == "42"
    assert body["usage"]["cost"] == float(cost) and body["usage"]["total_tokens"] == 12
    assert headers["x-faregate-cost-usd"] == "0.000012"
    assert (headers["x-faregate-model"], headers["x-faregate-provider"]) == ("cheap", "a")
    assert (headers["x-faregate-attempts"], headers["x-faregate-route"]) == ("1", "cheap")
    assert headers["x-faregate-cache"] == "bypass"  # not deterministic: no temperature 0
    assert headers["x-ratelimit-remaining-requests"] == "9"
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
    assert (record.status, record.model_used, record.provider, record.cost_usd) == (200, "cheap", "a", cost)
    assert record.request_id == headers["x-faregate-request-id"]
    assert (record.key_id, record.model_requested, record.route, record.cache_status) == (
        "key_1",
        "cheap",
        "cheap",
        "bypass",
    )
    assert record.baseline_cost_usd == Price(Decimal(100), Decimal(100)).cost(Usage(10, 2))
    assert record.latency_ms > 0 and not record.stream
    # The call upstream: the upstream's own model name, the gateway's fields removed.
    assert harness.a.calls[0].body["model"] == "cheap" and "faregate" not in harness.a.calls[0].body


async def test_a_model_asked_by_an_alias_or_in_another_case_is_one_route(harness: Harness) -> None:
    # The record and the header kept the client's spelling: one row per spelling on the dashboard
    # (by route), and a `route:` alert or filter missed them, while /metrics counted them as one.
    for name in ("vendor/Cheap-1", "CHEAP", "cheap"):
        ask = {"model": name, "temperature": 0, **ASK}
        for _ in range(2):  # a miss, then (once stored) a hit
            status, headers, _ = await harness.post(ask)
            assert status == 200 and headers["x-faregate-route"] == "cheap"
            assert (harness.records[-1].route, harness.records[-1].model_requested) == ("cheap", name)
            await harness.cached()
    assert {r.cache_status for r in harness.records} == {"miss", "hit"}
    status, headers, _ = await harness.post({"model": "strong", "models": ["CHEAP", "strong"], **ASK})
    assert status == 200 and harness.records[-1].route == headers["x-faregate-route"] == "list:cheap,strong"


async def test_a_backlogged_record_writer_holds_the_request_after_its_record(harness: Harness) -> None:
    harness.pipeline.records.backlogged = True  # type: ignore[attr-defined]
    status, _, _ = await harness.post({"model": "cheap", **ASK})
    assert status == 200
    assert harness.events[-2:] == ["record", "wait for room"]
    status, _, _ = await harness.post({"model": "cheap", **ASK})
    assert harness.events[-1] == "record"  # room again: no wait


async def test_a_request_without_a_hold_waits_for_room_too(harness: Harness) -> None:
    """A cache hit holds nothing: its record is written without `settle_and_record` (nothing to
    settle), and a backlogged writer holds it all the same."""
    ask = {"model": "cheap", "temperature": 0, **ASK}
    assert (await harness.post(ask))[0] == 200
    await harness.cached()
    harness.events.clear()
    harness.pipeline.records.backlogged = True  # type: ignore[attr-defined]
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    assert harness.events[-2:] == ["record", "wait for room"]


async def test_a_failing_model_falls_back_and_the_record_lists_both_attempts(harness: Harness) -> None:
    harness.a.outcomes = [UpstreamFailure("server_error", "HTTP 500", status=500)]
    status, headers, _ = await harness.post({"model": "pair", **ASK})
    assert status == 200 and headers["x-faregate-attempts"] == "2"
    assert (headers["x-faregate-model"], headers["x-faregate-route"]) == ("strong", "pair")
    (record,) = harness.records
    assert [(a.provider, a.outcome) for a in record.attempts] == [("a", "server_error"), ("b", "ok")]
    assert harness.events[2:6] == ["plan", "reserve", "upstream a", "upstream b"]


@pytest.mark.parametrize("stream", [False, True])
async def test_each_attempt_in_the_record_carries_its_own_billed_cost(harness: Harness, stream: bool) -> None:
    # docs/dashboard.md: a request's attempts show the billed cost of each upstream call, the
    # one that answered too; the request's cost is still their sum, each counted once.
    blank_stream = [
        chunk({}, "stop"),
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 0}},
    ]
    harness.a.outcomes = [blank_stream if stream else answer("", Usage(10, 0))]  # billed, then falls back
    status, _, _ = await harness.post({"model": "pair", "stream": stream, **ASK})
    assert status == 200
    (record,) = harness.records
    failed = Price(Decimal(1), Decimal(1)).cost(Usage(10, 0))
    served = Price(Decimal(10), Decimal(10)).cost(Usage(10, 2))
    assert [(a.provider, a.outcome, a.cost) for a in record.attempts] == [
        ("a", "empty", failed),
        ("b", "ok", served),
    ]
    assert [(a.prompt_tokens, a.completion_tokens) for a in record.attempts] == [(10, 0), (10, 2)]
    # What the dashboard's attempts detail shows (the stored JSON, its cost_usd printed as is).
    stored = orjson.loads(attempts_json(record.attempts))
    assert [a["cost_usd"] for a in stored] == [usd_text(failed), usd_text(served)]
    assert record.cost_usd == failed + served
    # Both calls' tokens count against the key's tokens per minute, as both calls' costs are charged.
    assert harness.events[-2:] == [f"settle {failed + served} 22", "record"]


async def test_a_cascade_records_the_cost_of_the_answer_that_was_served(harness: Harness) -> None:
    harness.a.outcomes = [answer("it is a big number", Usage(10, 5))]
    status, _, _ = await harness.post({"model": "cascade", **ASK})
    assert status == 200
    (record,) = harness.records
    escalated = Price(Decimal(1), Decimal(1)).cost(Usage(10, 5))
    served = Price(Decimal(10), Decimal(10)).cost(Usage(10, 2))
    assert [(a.outcome, a.cost) for a in record.attempts] == [("escalated", escalated), ("ok", served)]
    assert record.cost_usd == escalated + served


# -- streams --------------------------------------------------------------------------------------


async def test_a_stream_is_relayed_with_its_cost_and_settled_at_its_end(harness: Harness) -> None:
    status, headers, raw = await harness.post(
        {"model": "cheap", "stream": True, "stream_options": {"include_usage": True}, **ASK}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    frames = sse_chunks(raw)
    assert frames[-1] == b"[DONE]"
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-2])
    assert text == "42" and all(f["model"] == "cheap" for f in frames[:-1])
    cost = Price(Decimal(1), Decimal(1)).cost(Usage(10, 2))
    assert frames[-2]["choices"] == [] and frames[-2]["usage"]["cost"] == float(cost)
    assert harness.events[-3:] == ["upstream a", f"settle {cost} 12", "record"]
    (record,) = harness.records
    assert record.stream and record.status == 200 and record.cost_usd == cost
    assert record.ttft_ms is not None and record.ttft_ms <= record.latency_ms
    health = harness.pipeline.runner.health.breaker("a/cheap")
    assert list(health.recent) == [True], "the served stream told the offer's health, once"
    assert harness.a.calls[0].body["stream_options"] == {"include_usage": True}


async def test_usage_sent_on_the_last_chunk_with_choices_reaches_the_client_once_priced(
    harness: Harness,
) -> None:
    """Some upstreams send the usage on their last chunk with choices (the finish), with no
    usage-only chunk after it. The client gets it once, as OpenAI sends it: on the closing
    usage-only chunk, priced and with the upstream's details; the finish chunk says null, or a
    client that adds up every chunk's usage (as LangChain's aggregation does) counts it twice."""
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    harness.a.outcomes = [[*WHOLE_STREAM[:3], {**chunk({}, "stop"), "usage": usage}]]
    status, _, raw = await harness.post(
        {"model": "cheap", "stream": True, "stream_options": {"include_usage": True}, **ASK}
    )
    assert status == 200
    frames = sse_chunks(raw)
    assert frames[-1] == b"[DONE]"
    with_usage = [f for f in frames[:-1] if f.get("usage") is not None]
    assert with_usage == [frames[-2]] and frames[-2]["choices"] == [], frames
    assert frames[-3]["choices"][0]["finish_reason"] == "stop"
    final = frames[-2]["usage"]
    assert final["cost"] > 0 and final["prompt_tokens_details"]["cached_tokens"] == 4
    assert harness.records[0].prompt_tokens == 10


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": 10, "completion_tokens": 2}])
async def test_a_usage_chunk_the_gateway_makes_belongs_to_the_stream(
    harness: Harness, usage: JSON | None
) -> None:
    """An upstream that reports no usage, or reports it on its finish chunk: the usage-only chunk
    the gateway writes (with the usage and its cost) carries the stream's own id, created and
    system_fingerprint, as every chunk of one OpenAI stream does (clients group chunks by id)."""
    same = {"object": "chat.completion.chunk", "system_fingerprint": "fp_1"}
    stream = [{**each, **same} for each in WHOLE_STREAM[:4]]
    if usage is not None:
        stream[-1]["usage"] = usage
    harness.a.outcomes = [stream]
    status, _, raw = await harness.post(
        {"model": "cheap", "stream": True, "stream_options": {"include_usage": True}, **ASK}
    )
    assert status == 200
    frames = sse_chunks(raw)
    assert frames[-1] == b"[DONE]"
    final = frames[-2]
    assert final["choices"] == [] and final["usage"].get("estimated", False) is (usage is None)
    shared = {(f["id"], f["created"], f["model"], f["system_fingerprint"], f["object"]) for f in frames[:-1]}
    assert shared == {("c", 1, "cheap", "fp_1", "chat.completion.chunk")}, frames


async def test_what_one_upstream_read_brought_is_written_at_once_the_first_content_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, four, two, stop, usage = (orjson.loads(orjson.dumps(c)) for c in WHOLE_STREAM)

    async def stream_reads(call: UpstreamCall) -> AsyncIterator[list[JSON]]:
        harness.a._next(call)
        yield [role, four, two]  # one upstream read, the first content in the middle
        yield [stop, usage]

    harness.a.stream_reads = stream_reads  # type: ignore[attr-defined]
    writes: list[bytes] = []
    write = web.StreamResponse.write

    async def spied(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        await write(self, data)

    write_eof = web.StreamResponse.write_eof

    async def spied_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        if data:  # the closing frames go with the end of the body (aiohttp ends it again, empty)
            writes.append(bytes(data))
        await write_eof(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", spied)
    monkeypatch.setattr(web.StreamResponse, "write_eof", spied_eof)
    status, _, raw = await harness.post({"model": "cheap", "stream": True, **ASK})
    assert status == 200

    def contents(data: bytes) -> list[Any]:
        return [f if f == b"[DONE]" else f["choices"][0]["delta"].get("content") for f in sse_chunks(data)]

    # The first content goes out with what came before it, then the rest of its read at once,
    # then the next read (the usage-only chunk is held back for the cost; not asked for here).
    assert [contents(w) for w in writes] == [["", "4"], ["2"], [None], [b"[DONE]"]]
    assert b"".join(writes) == raw


async def test_a_stream_cut_short_ends_with_an_error_event(harness: Harness) -> None:
    harness.a.outcomes = [WHOLE_STREAM[:2]]  # content, then the end: no finish_reason
    status, _, raw = await harness.post({"model": "cheap", "stream": True, **ASK})
    assert status == 200  # the client has seen content: the error comes in the stream
    last = sse_chunks(raw)[-1]
    assert last["error"]["code"] == "stream_interrupted"
    (record,) = harness.records
    assert record.status == 502 and "without a finish_reason" in (record.error or "")
    assert record.attempts[-1].outcome == "truncated"
    assert list(harness.pipeline.runner.health.breaker("a/cheap").recent) == [False]
    assert harness.events[-2].startswith("settle"), "the tokens it sent are billed (estimated)"
    assert record.usage_estimated and record.completion_tokens > 0


@pytest.mark.parametrize("finished", [(0, 1), (0,)])
async def test_a_stream_of_several_choices_ends_cleanly_only_when_each_has_finished(
    harness: Harness, finished: tuple[int, ...]
) -> None:
    """With n=2 the choices stream side by side; an upstream cut after choice 0 finished but
    before choice 1 did is a cut stream (the error event, billed, recorded 502), not a clean
    [DONE] for an answer whose second choice never ended."""

    def of(index: int, delta: JSON, finish: str | None = None) -> JSON:
        return {
            "id": "c",
            "created": 1,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    stream = [of(i, {"role": "assistant", "content": ""}) for i in (0, 1)]
    stream += [of(i, {"content": "42"}) for i in (0, 1)]
    stream += [of(i, {}, "stop") for i in finished]
    harness.a.outcomes = [stream]
    status, _, raw = await harness.post({"model": "cheap", "stream": True, "n": 2, **ASK})
    assert status == 200
    last = sse_chunks(raw)[-1]
    (record,) = harness.records
    if finished == (0, 1):
        assert last == b"[DONE]" and record.status == 200
    else:
        assert last != b"[DONE]" and last["error"]["code"] == "stream_interrupted"
        assert record.status == 502 and "without a finish_reason" in (record.error or "")


async def test_a_stream_that_fails_before_content_falls_back_invisibly(harness: Harness) -> None:
    harness.a.outcomes = [[UpstreamFailure("connection", "reset")]]
    status, headers, raw = await harness.post({"model": "pair", "stream": True, **ASK})
    assert status == 200 and headers["x-faregate-provider"] == "b"
    assert sse_chunks(raw)[-1] == b"[DONE]"
    assert [a.outcome for a in harness.records[0].attempts] == ["connection", "ok"]


# -- the cache ------------------------------------------------------------------------------------


async def test_a_cache_hit_takes_a_request_from_the_rate_limit_and_nothing_else(harness: Harness) -> None:
    ask = {"model": "cheap", "temperature": 0, **ASK}
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "miss"
    await harness.cached()
    status, headers, raw = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    assert harness.events == ["authenticate", "cache lookup", "rate limit", "record"]
    assert (headers["x-faregate-cost-usd"], headers["x-faregate-attempts"]) == ("0", "0")
    assert headers["x-faregate-route"] == "cheap" and headers["x-ratelimit-remaining-requests"] == "8"
    assert orjson.loads(raw)["usage"]["cost"] == 0
    hit = harness.records[-1]
    assert (hit.cache_status, hit.cost_usd, hit.prompt_tokens, hit.route) == ("hit", 0, 10, "cheap")
    # The same answer as a stream, from the cache.
    status, _, raw = await harness.post({**ask, "stream": True, "stream_options": {"include_usage": True}})
    frames = sse_chunks(raw)
    assert frames[-1] == b"[DONE]" and frames[-2]["usage"]["cost"] == 0
    assert "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-2]) == "42"
    assert harness.records[-1].ttft_ms is not None
    # Over the rate limit, a hit is refused like any request, and still recorded.
    harness.admission.refuse_hits = True
    status, headers, _ = await harness.post(ask)
    assert status == 429 and harness.records[-1].status == 429


async def test_a_route_that_picks_by_stream_never_serves_one_mode_the_others_answer(
    harness: Harness,
) -> None:
    """A rule on `stream` picks the model within the route: a stream asked after a whole answer is
    the strong model's, not the cheap model's answer replayed from the cache (and back)."""
    # The cascade buffers streams (its default): only the rule picks by stream.
    assert harness.pipeline.planner.routes.stream_picked == {"by-stream"}
    ask = {"model": "by-stream", "temperature": 0, **ASK}
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-model"] == "cheap"
    await harness.cached()
    status, headers, _ = await harness.post({**ask, "stream": True})
    assert status == 200 and headers["x-faregate-cache"] == "miss"
    assert headers["x-faregate-model"] == "strong"
    # Each mode still hits its own entry.
    status, headers, _ = await harness.post(ask)
    assert headers["x-faregate-cache"] == "hit" and headers["x-faregate-model"] == "cheap"
    # A route that does not pick by stream still shares one entry between the two.
    pair = {"model": "pair", "temperature": 0, **ASK}
    await harness.post(pair)
    for _ in range(500):
        if harness.pipeline.cache is not None and harness.pipeline.cache.writes >= 3:
            break
        await asyncio.sleep(0.01)
    status, headers, _ = await harness.post({**pair, "stream": True})
    assert headers["x-faregate-cache"] == "hit" and headers["x-faregate-model"] == "cheap"


@pytest.mark.parametrize("finish", ["error", "content_filter"])
async def test_an_answer_its_provider_ended_as_failed_or_filtered_is_served_but_not_kept(
    harness: Harness, finish: str
) -> None:
    """A whole answer that says it did not come out whole (OpenRouter's `error` when the provider
    failed mid-answer, a content filter cutting it) was kept like any other, and served for the
    TTL to every request that asked the same; a stream that ended so was not kept already."""
    cache = harness.pipeline.cache
    assert cache is not None

    async def stored() -> None:  # the background writes begun so far have landed
        while cache._tasks:
            await asyncio.gather(*list(cache._tasks))

    cut = answer("Half an ans")
    cut.body["choices"][0]["finish_reason"] = finish
    harness.a.outcomes = [cut, answer("The whole answer.")]
    ask = {"model": "cheap", "temperature": 0, **ASK}
    status, headers, raw = await harness.post(ask)
    assert status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "Half an ans"
    await stored()
    status, headers, raw = await harness.post(ask)
    assert headers["x-faregate-cache"] == "miss", "the cut answer was not kept"
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "The whole answer."
    await stored()
    status, headers, raw = await harness.post(ask)
    assert headers["x-faregate-cache"] == "hit"
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "The whole answer."


async def test_a_kept_answer_replayed_as_a_stream_carries_all_it_said(harness: Harness) -> None:
    """A whole answer kept by the cache and asked again as a stream (stream is not in the key) is
    replayed as chunks: a legacy function call, an audio answer and the logprobs asked for must be
    in them (they were dropped: a stream of a role and a finish, an empty answer)."""
    said = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "audio": {"id": "audio_1", "data": "UklGRg==", "transcript": "Sunny.", "expires_at": 9},
    }
    logprobs = {"content": [{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}]}
    kept = answer()
    kept.body["choices"] = [
        {"index": 0, "message": said, "logprobs": logprobs, "finish_reason": "function_call"}
    ]
    harness.a.outcomes = [kept]
    functions = [{"name": "get_weather", "parameters": {"type": "object"}}]
    ask = {"model": "cheap", "temperature": 0, "functions": functions, "logprobs": True, **ASK}
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "miss"
    await harness.cached()
    status, headers, raw = await harness.post({**ask, "stream": True})
    assert status == 200 and headers["x-faregate-cache"] == "hit"
    choices = [f["choices"][0] for f in sse_chunks(raw)[:-1]]
    deltas = [c["delta"] for c in choices]
    assert [d["function_call"] for d in deltas if "function_call" in d] == [said["function_call"]]
    assert [d["audio"] for d in deltas if "audio" in d] == [said["audio"]]
    assert [c["logprobs"] for c in choices if c["logprobs"]] == [logprobs]
    assert choices[-1]["finish_reason"] == "function_call"


async def _stored(harness: Harness) -> None:
    """The background cache writes begun so far have landed."""
    cache = harness.pipeline.cache
    assert cache is not None
    while cache._tasks:
        await asyncio.gather(*list(cache._tasks))


def _said(raw: bytes) -> str:
    return str(orjson.loads(raw)["choices"][0]["message"]["content"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallbacks_answer_is_served_but_not_kept_for_the_route(
    harness: Harness, stream: bool
) -> None:
    """The route's first model failed and its fallback answered: that answer was kept under the
    route, and served for the whole TTL after the first model was back (often a weaker or another
    model's answer, for an hour). It is served, not kept; the route's own model's answer is."""
    ask = {"model": "pair", "temperature": 0, **ASK}
    harness.a.outcomes = [UpstreamFailure("server_error", "HTTP 500", status=500), answer("cheap says 42")]
    harness.b.outcomes = [
        [chunk({"role": "assistant", "content": "strong says 42"}), chunk({}, "stop"), WHOLE_STREAM[-1]]
        if stream
        else answer("strong says 42")
    ]
    status, headers, _ = await harness.post({**ask, "stream": stream})
    assert status == 200 and headers["x-faregate-model"] == "strong"
    await _stored(harness)
    status, headers, raw = await harness.post(ask)
    assert (headers["x-faregate-cache"], headers["x-faregate-model"]) == ("miss", "cheap")
    assert _said(raw) == "cheap says 42"
    await _stored(harness)
    status, headers, raw = await harness.post(ask)
    assert headers["x-faregate-cache"] == "hit" and _said(raw) == "cheap says 42"


async def test_an_answer_from_past_a_model_whose_breakers_are_open_is_not_kept(harness: Harness) -> None:
    """The route's first model was left out of the plan (its breaker open): the fallback answered
    without a failed call in the record, and was kept all the same."""
    health = harness.pipeline.planner.health
    (offer,) = harness.pipeline.planner.catalog.get("cheap").offers  # type: ignore[union-attr]
    for _ in range(5):
        health.failure(offer.key, "key_1")
    assert not health.usable(offer.key, api_key="key_1")
    harness.b.outcomes = [answer("strong says 42")]
    ask = {"model": "pair", "temperature": 0, **ASK}
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-model"] == "strong"
    await _stored(harness)
    assert harness.pipeline.cache is not None and harness.pipeline.cache.writes == 0
    # A model named alone has no fallback model: another offer of it is the same model's answer.
    harness.b.outcomes = [answer("strong says 42")]
    await harness.post({"model": "strong", "temperature": 0, **ASK})
    await _stored(harness)
    assert harness.pipeline.cache.writes == 1


async def test_a_cascades_escalated_answer_is_the_routes_own_and_kept(harness: Harness) -> None:
    """A cascade's later step answering after its judge refused the first is the route at work,
    not a fallback: kept, and served to the next request free."""
    harness.a.outcomes = [answer("it is a big number", Usage(10, 5))]
    harness.b.outcomes = [answer("42")]
    ask = {"model": "cascade", "temperature": 0, **ASK}
    status, headers, _ = await harness.post(ask)
    assert status == 200 and headers["x-faregate-model"] == "strong"
    await _stored(harness)
    status, headers, raw = await harness.post(ask)
    assert headers["x-faregate-cache"] == "hit" and _said(raw) == "42"


async def test_a_route_pointed_at_another_model_is_not_served_the_old_models_answers(
    harness: Harness,
) -> None:
    """The operator points a route at another model (a restart with the new configuration; the
    cache, in Redis, outlives it): the answers its old model gave were served under the route's
    name for their whole TTL. A route's entries are keyed by its definition too."""
    ask = {"model": "pair", "temperature": 0, **ASK}
    harness.a.outcomes = [answer("cheap says 42")]
    await harness.post(ask)
    await _stored(harness)
    old = harness.pipeline.planner
    routes = parse_settings(
        {"providers": PROVIDERS, "models": MODELS, "routes": {**ROUTES, "pair": {"chain": ["strong"]}}}
    ).routes
    harness.pipeline.planner = Planner(old.catalog, routes, old.routing, old.health)
    harness.b.outcomes = [answer("strong says 42")]
    _status, headers, raw = await harness.post(ask)
    assert (headers["x-faregate-cache"], headers["x-faregate-model"]) == ("miss", "strong")
    assert _said(raw) == "strong says 42"
    # Another route's entries are untouched by it.
    harness.a.outcomes = [answer("cheap alone")]
    await harness.post({**ask, "model": "by-stream"})
    await _stored(harness)
    harness.pipeline.planner = Planner(old.catalog, routes | {"pair": old.routes.routes["pair"]}, old.routing)
    _, headers, raw = await harness.post({**ask, "model": "by-stream"})
    assert headers["x-faregate-cache"] == "hit" and _said(raw) == "cheap alone"


# -- a cascade ------------------------------------------------------------------------------------


async def test_a_cascade_escalates_and_bills_every_call(harness: Harness) -> None:
    harness.a.outcomes = [answer("it is a big number", Usage(10, 5))]
    status, headers, _ = await harness.post({"model": "cascade", **ASK})
    assert status == 200
    assert headers["x-faregate-cascade"] == "escalated; escalations=1"
    assert "escalated: no final numeric answer" in headers["x-faregate-judge"]
    (record,) = harness.records
    assert [(a.model, a.outcome) for a in record.attempts] == [("cheap", "escalated"), ("strong", "ok")]
    escalated = Price(Decimal(1), Decimal(1)).cost(Usage(10, 5))
    assert record.cost_usd == Price(Decimal(10), Decimal(10)).cost(Usage(10, 2)) + escalated
    assert harness.events[2:6] == ["plan", "reserve", "upstream a", "upstream b"]


async def test_a_cascade_answer_accepted_for_a_stream_is_replayed_as_one(harness: Harness) -> None:
    harness.a.outcomes = [answer("6 times 7 is 42. The answer is 42")]
    status, headers, raw = await harness.post({"model": "cascade", "stream": True, **ASK})
    assert status == 200 and headers["x-faregate-cascade"] == "accepted; escalations=0"
    frames = sse_chunks(raw)
    assert frames[-1] == b"[DONE]" and frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert harness.b.calls == [] and harness.records[0].model_used == "cheap"


async def test_a_cascade_whose_last_step_fails_lists_every_attempt(harness: Harness) -> None:
    harness.a.outcomes = [answer("no number here")]
    harness.b.outcomes = [UpstreamFailure("server_error", "HTTP 503", status=503)]
    status, headers, raw = await harness.post({"model": "cascade", **ASK})
    assert status == 502 and headers["x-faregate-attempts"] == "2"
    message = orjson.loads(raw)["error"]["message"]
    assert message.startswith("The cascade's last step failed (2 attempt(s) in all)")
    (record,) = harness.records
    assert record.cost_usd > 0 and harness.events[-2].startswith("settle"), "the escalated step is billed"


# -- errors ---------------------------------------------------------------------------------------


async def test_a_bad_key_is_refused_before_anything_else(harness: Harness) -> None:
    status, headers, raw = await harness.post({"model": "cheap", **ASK}, key="fg-wrong")
    assert status == 401 and orjson.loads(raw)["error"]["code"] == "invalid_api_key"
    # It says which key to send, not only that this one is wrong.
    message = orjson.loads(raw)["error"]["message"]
    assert "`faregate keys create`" in message and "the master key is for the admin API" in message
    assert harness.events == ["authenticate", "record"]
    (record,) = harness.records
    assert (record.status, record.key_id) == (401, None) and "x-faregate-request-id" in headers


async def test_a_bad_body_is_a_400_naming_the_field(harness: Harness) -> None:
    status, _, raw = await harness.post({"model": "cheap", "messages": "hi"})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "messages"
    assert harness.records[0].model_requested == "cheap" and harness.events == ["authenticate", "record"]


async def test_a_request_the_upstream_rejects_is_passed_through_and_released(harness: Harness) -> None:
    harness.a.outcomes = [UpstreamRejected(400, "a rejected the request: bad tool schema", code="bad_tools")]
    status, headers, raw = await harness.post({"model": "pair", **ASK})
    assert status == 400 and orjson.loads(raw)["error"]["code"] == "bad_tools"
    assert headers["x-faregate-attempts"] == "1" and harness.b.calls == []
    assert harness.events[-2:] == ["release", "record"]
    assert [a.outcome for a in harness.records[0].attempts] == ["rejected"]


async def test_when_every_attempt_fails_the_billed_ones_are_settled(harness: Harness) -> None:
    empty = Completion({"choices": []}, Usage(10, 0))  # a blank 200: the provider bills its prompt
    harness.a.outcomes = [empty]
    harness.b.outcomes = [UpstreamFailure("timeout", "no response head")]
    status, _, raw = await harness.post({"model": "pair", **ASK})
    assert status == 502 and orjson.loads(raw)["error"]["code"] == "upstream_failed"
    billed = Price(Decimal(1), Decimal(1)).cost(Usage(10, 0))
    # Its 10 billed prompt tokens count against the key's tokens per minute, as its cost does.
    assert harness.events[-2:] == [f"settle {billed} 10", "record"]
    (record,) = harness.records
    assert record.cost_usd == billed and [a.outcome for a in record.attempts] == ["empty", "timeout"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_request_that_was_billed_says_its_cost(harness: Harness, stream: bool) -> None:
    """Every response says what it cost: a 502 whose attempts the providers billed (a blank 200
    bills its prompt) is charged that, so its error says it in x-faregate-cost-usd, the figure the
    record and the settlement have; it said nothing, as if the failure were free. One that cost
    nothing says 0."""
    blank_stream = [
        chunk({}, "stop"),
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 0}},
    ]
    harness.a.outcomes = [blank_stream if stream else Completion({"choices": []}, Usage(10, 0))]
    harness.b.outcomes = [UpstreamFailure("timeout", "no response head")]
    status, headers, _ = await harness.post({"model": "pair", "stream": stream, **ASK})
    assert status == 502
    billed = Price(Decimal(1), Decimal(1)).cost(Usage(10, 0))
    assert harness.records[0].cost_usd == billed
    assert headers["x-faregate-cost-usd"] == money(billed)
    harness.a.outcomes = [UpstreamFailure("connection", "reset")]
    harness.b.outcomes = [UpstreamFailure("timeout", "no response head")]
    status, headers, _ = await harness.post({"model": "pair", "stream": stream, **ASK})
    assert status == 502 and headers["x-faregate-cost-usd"] == "0"


async def test_a_bug_is_a_clean_500_and_the_hold_is_released(harness: Harness) -> None:
    harness.a.outcomes = [RuntimeError("a bug of ours")]
    status, _, raw = await harness.post({"model": "cheap", **ASK})
    assert status == 500 and "bug" not in raw.decode()
    assert orjson.loads(raw)["error"]["code"] == "internal_error"
    assert harness.events[-2:] == ["release", "record"]
    assert harness.records[0].error == "internal error: RuntimeError"


async def test_a_stream_cancelled_after_content_is_settled_for_what_it_sent(harness: Harness) -> None:
    """A handler cancelled mid-stream (a shutdown past its grace cancels the requests still
    running) has had content billed upstream: its hold is settled for it, not released whole."""
    role, four, two = (orjson.loads(orjson.dumps(c)) for c in WHOLE_STREAM[:3])
    handler: list[asyncio.Task[Any]] = []
    relayed = asyncio.Event()

    async def stream_reads(call: UpstreamCall) -> AsyncIterator[list[JSON]]:
        harness.a._next(call)
        task = asyncio.current_task()
        assert task is not None
        handler.append(task)
        yield [role, four]
        yield [two]
        relayed.set()
        await asyncio.Event().wait()  # the upstream goes quiet; the request is still running
        yield []

    harness.a.stream_reads = stream_reads  # type: ignore[attr-defined]
    harness.events.clear()
    body = orjson.dumps({"model": "cheap", "stream": True, **ASK})
    post = asyncio.create_task(
        harness.client.post("/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {KEY}"})
    )
    await asyncio.wait_for(relayed.wait(), 5)
    handler[0].cancel()
    for _ in range(500):
        if harness.records:
            break
        await asyncio.sleep(0.01)
    post.cancel()
    with contextlib.suppress(BaseException):
        await post
    (record,) = harness.records
    assert "release" not in harness.events, harness.events
    settled = [e for e in harness.events if e.startswith("settle")]
    assert settled and Decimal(settled[0].split()[1]) > 0, harness.events
    assert record.cost_usd > 0 and record.completion_tokens >= 2


async def test_a_request_cancelled_while_its_hold_settles_is_still_recorded(harness: Harness) -> None:
    """A shutdown past its grace may cancel a handler while the store settles its hold: the
    settlement is the store's business (the hold expires and is audited), the record is ours."""
    settling = asyncio.Event()

    async def stuck_settle(hold: Hold, cost_usd: Decimal, tokens: int) -> None:
        settling.set()
        await asyncio.Event().wait()

    harness.admission.settle = stuck_settle  # type: ignore[method-assign]
    post = asyncio.create_task(harness.post({"model": "cheap", **ASK}))
    await asyncio.wait_for(settling.wait(), 5)
    for task in asyncio.all_tasks():  # the server's handler, waiting in the settlement
        if "_close_hold" in repr(task.get_stack()):
            task.cancel()
    post.cancel()
    with contextlib.suppress(BaseException):
        await post
    for _ in range(100):
        if harness.records:
            break
        await asyncio.sleep(0.01)
    (record,) = harness.records
    assert record.status == 200 and record.cost_usd > 0


async def test_a_request_cancelled_while_its_answer_is_written_leaves_no_verification_pending(
    harness: Harness,
) -> None:
    """A verification is counted as pending before the answer is written (`_promise`); a handler
    cancelled in that write (its client gone, a shutdown past its grace) must not leave it counted
    for good: /admin/quality would say "pending" forever, and a client waiting for 0 would hang."""
    from faregate.quality.service import QualityService
    from test_quality_live import FakeStore

    service = QualityService([], FakeStore())
    verifier = Verifier(service, harness.pipeline.runner, harness.pipeline.planner)
    harness.pipeline.verifier = verifier
    writing = asyncio.Event()

    class StuckWrite:
        async def send(self, response: Whole) -> None:
            writing.set()
            await asyncio.Event().wait()

    exchange = SimpleNamespace(http=StuckWrite(), verification=None, client_gone=lambda when: None)
    job = cast(Any, object())
    promised = asyncio.create_task(harness.pipeline._promise(cast(Any, exchange), job, Whole(200, b"{}", {})))
    await asyncio.wait_for(writing.wait(), 5)
    assert verifier.pending == 1
    promised.cancel()
    with pytest.raises(asyncio.CancelledError):
        await promised
    assert verifier.pending == 0 and exchange.verification is None


async def test_the_upstream_is_never_allowed_more_output_than_the_hold_covers(harness: Harness) -> None:
    """max_completion_tokens wins over max_tokens (OpenAI's rule), and the hold covers it alone;
    an OpenAI-compatible upstream that reads only max_tokens (many do) must not be sent a larger
    one, or a request spends past its hold (and a key past its credits, as often as it likes)."""
    both = {"max_completion_tokens": 7, "max_tokens": 4000}
    status, _, _ = await harness.post({"model": "cheap", **both, **ASK})
    assert status == 200
    (hold,) = harness.admission.holds
    (call,) = harness.a.calls
    caps = [call.body[name] for name in ("max_completion_tokens", "max_tokens") if name in call.body]
    assert caps and max(caps) <= 7 < hold.reserved_tokens, (caps, hold.reserved_tokens)


async def test_a_developer_message_reaches_the_upstream_as_a_system_one(harness: Harness) -> None:
    """OpenAI's SDKs and agents send `developer` (OpenAI's name for system instructions since
    o1); DeepSeek and many OpenAI-wire servers refuse the role (400 `unknown variant
    developer`), so a client switching base_url to the gateway failed on the cheap models. Every
    upstream gets it as `system`, which OpenAI takes as developer instructions."""
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    asked = {"model": "cheap", "messages": messages}
    status, _, _ = await harness.post(asked)
    assert status == 200
    (call,) = harness.a.calls
    assert [m["role"] for m in call.body["messages"]] == ["system", "user"]
    assert call.body["messages"][0]["content"] == "Be brief."


async def test_a_cut_stream_without_usage_is_charged_for_the_reasoning_it_relayed(harness: Harness) -> None:
    """A reasoning model streams its reasoning (reasoning_content) before the answer; a stream cut
    without usage is charged for what it relayed, the reasoning included (the provider bills it)."""
    thinking = "Let me think about this carefully, step by step, before answering. " * 40
    harness.a.outcomes = [
        [
            chunk({"role": "assistant", "content": ""}),
            *(chunk({"reasoning_content": piece + " "}) for piece in thinking.split(" ")),
            chunk({"content": "42"}),
        ]
    ]
    status, _, raw = await harness.post({"model": "cheap", "stream": True, **ASK})
    assert status == 200 and sse_chunks(raw)[-1]["error"]["code"] == "stream_interrupted"
    (record,) = harness.records
    assert record.usage_estimated
    assert record.completion_tokens >= 400, record.completion_tokens  # ~480 words of reasoning


@pytest.mark.parametrize("failure", [UpstreamFailure("connection", "reset"), None])
async def test_a_stream_that_fails_while_reasoning_is_charged_for_it_and_falls_back(
    harness: Harness, failure: UpstreamFailure | None
) -> None:
    """A reasoning model thinks before its first content, and the stream is held back till then;
    one that fails there (a reset, or an end without a finish reason) falls back invisibly, but its
    reasoning was generated and billed upstream: the failed attempt is charged an estimate of it, as
    a stream cut after content is, and the request's cost says so. (One that failed before any
    output is still not charged its prompt: test_a_stream_that_fails_before_content_...)"""
    thinking = "Let me think about this carefully, step by step, before answering. " * 40
    harness.a.outcomes = [
        [
            chunk({"role": "assistant", "content": ""}),
            *(chunk({"reasoning_content": piece + " "}) for piece in thinking.split(" ")),
            *([failure] if failure is not None else []),
        ]
    ]
    status, headers, raw = await harness.post({"model": "pair", "stream": True, **ASK})
    assert status == 200 and headers["x-faregate-provider"] == "b"
    assert sse_chunks(raw)[-1] == b"[DONE]"
    (record,) = harness.records
    failed, served = record.attempts
    assert (failed.outcome, served.outcome) == ("connection" if failure else "truncated", "ok")
    assert failed.completion_tokens >= 400, failed.completion_tokens  # ~480 words of reasoning
    assert failed.cost == Price(Decimal(1), Decimal(1)).cost(
        Usage(failed.prompt_tokens, failed.completion_tokens)
    )
    assert record.cost_usd == failed.cost + served.cost and failed.cost > 0


async def test_a_stream_at_the_deadline_while_reasoning_is_charged_for_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's deadline reached while a reasoning model still thinks (nothing relayed yet):
    the request fails, but the reasoning read was generated and billed upstream, so the timed-out
    attempt is charged an estimate of it and the hold settled with it, not released."""
    thinking = "Let me think about this carefully, step by step, before answering. " * 40

    async def thinks_then_stalls(call: UpstreamCall) -> AsyncIterator[JSON]:
        harness.a.calls.append(call)
        yield chunk({"role": "assistant", "content": ""})
        for piece in thinking.split(" "):
            yield chunk({"reasoning_content": piece + " "})
        await asyncio.Event().wait()  # still thinking when the deadline comes

    monkeypatch.setattr(harness.a, "stream", thinks_then_stalls)
    harness.pipeline.runner.request_timeout_s = 0.5
    status, _, _ = await harness.post({"model": "cheap", "stream": True, **ASK})
    assert status == 504
    (record,) = harness.records
    (attempt,) = record.attempts
    assert attempt.outcome == "timeout" and attempt.completion_tokens >= 400, attempt
    assert record.cost_usd == attempt.cost > 0
    tokens = attempt.prompt_tokens + attempt.completion_tokens  # charged, so counted per minute too
    assert f"settle {attempt.cost} {tokens}" in harness.events and "release" not in harness.events


async def test_a_whole_answer_without_usage_is_charged_for_its_reasoning(harness: Harness) -> None:
    thinking = "Let me think about this carefully, step by step, before answering. " * 40
    whole = answer("42")
    whole.body["choices"][0]["message"]["reasoning_content"] = thinking
    harness.a.outcomes = [Completion(whole.body, None)]
    status, _, _ = await harness.post({"model": "cheap", **ASK})
    assert status == 200
    (record,) = harness.records
    assert record.usage_estimated
    assert record.completion_tokens >= 400, record.completion_tokens


async def test_a_client_gone_before_its_stream_opened_is_charged_for_the_reasoning_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream is held back until its first content, so a reasoning model may think for long
    before the client's stream opens; a client gone by then (its read timeout, a user who left)
    leaves the upstream's reasoning billed: it is charged for what was read, not for nothing."""
    thinking = "Let me think about this carefully, step by step, before answering. " * 40
    harness.a.outcomes = [
        [
            chunk({"role": "assistant", "content": ""}),
            *(chunk({"reasoning_content": piece + " "}) for piece in thinking.split(" ")),
            chunk({"content": "42"}),
            chunk({}, "stop"),
        ]
    ]

    async def gone(self: Any, headers: dict[str, str]) -> None:
        # As aiohttp's prepare fails on a transport the client has closed.
        self.response = web.StreamResponse(status=200, headers=headers)
        raise ConnectionResetError("Cannot write to closing transport")

    monkeypatch.setattr("faregate.server.aiohttp_seam.AiohttpRequest.open_stream", gone)
    with contextlib.suppress(Exception):
        await harness.post({"model": "cheap", "stream": True, **ASK})
    (record,) = harness.records
    assert record.status == 499 and record.usage_estimated
    assert record.completion_tokens >= 400, record.completion_tokens  # ~480 words of reasoning
    settled = [e for e in harness.events if e.startswith("settle")]
    assert settled and "release" not in harness.events, harness.events


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blank_answer_cut_at_max_tokens_is_served_not_paid_for_again(
    harness: Harness, stream: bool
) -> None:
    """A reasoning model that spends the client's max_tokens on its reasoning answers blank with
    finish_reason "length" (OpenAI's own models do). That is the client's limit, which a retry or
    another model reaches as well, billed each time: the answer is served as the upstream gave it,
    billed once, not retried and fallen back from until a 502 that cost the client every call."""
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 50,
        "completion_tokens_details": {"reasoning_tokens": 50},
    }
    thinking = [chunk({"reasoning_content": "Let me see. "}) for _ in range(5)]
    cut_stream = [
        chunk({"role": "assistant", "content": ""}),
        *thinking,
        chunk({}, "length"),
        {"id": "c", "choices": [], "usage": usage},
    ]
    blank = answer("", Usage(10, 50))
    blank.body["choices"][0]["finish_reason"] = "length"
    harness.a.outcomes = [cut_stream if stream else blank]
    ask = {"model": "pair", "stream": stream, "max_tokens": 50, "temperature": 0, **ASK}
    status, headers, raw = await harness.post(ask)
    assert status == 200 and headers["x-faregate-cache"] == "miss"
    cache = harness.pipeline.cache
    assert cache is not None
    await cache.close()  # its writes done: a blank answer is not one to serve again
    assert cache.writes == 0
    if stream:
        frames = sse_chunks(raw)
        assert frames[-1] == b"[DONE]" and frames[-2]["choices"][0]["finish_reason"] == "length"
    else:
        assert orjson.loads(raw)["choices"][0]["finish_reason"] == "length"
    assert harness.b.calls == [] and len(harness.a.calls) == 1
    (record,) = harness.records
    cost = Price(Decimal(1), Decimal(1)).cost(Usage(10, 50))
    assert record.status == 200 and record.cost_usd == cost
    assert [(a.provider, a.outcome) for a in record.attempts] == [("a", "ok")]


async def test_a_cut_stream_keeps_the_usage_reported_before_its_end_and_adds_what_followed(
    harness: Harness,
) -> None:
    """Usage reported before a stream's end (Anthropic's message_start: the input side, its cache
    reads and writes, and 1 output token; a server that counts as it goes) is exact up to there.
    A stream cut after it is charged that, plus an estimate of what came after it: not the
    1 output token alone, and not an estimate of the prompt that prices its cache reads as input."""
    start = {
        "prompt_tokens": 7012,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 5000, "cache_write_tokens": 2000},
    }
    words = "The answer takes a while to explain, so here it comes in many small pieces. " * 10
    harness.a.outcomes = [
        [
            {"id": "c", "choices": [], "usage": start},
            chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": word + " "}) for word in words.split(" ")),
        ]
    ]
    status, _, raw = await harness.post({"model": "cheap", "stream": True, **ASK})
    assert status == 200 and sse_chunks(raw)[-1]["error"]["code"] == "stream_interrupted"
    (record,) = harness.records
    assert record.usage_estimated and record.prompt_tokens == 7012
    assert record.completion_tokens >= 1 + 150, record.completion_tokens  # 1 + ~150 words


async def test_a_request_in_its_offers_peak_hours_is_held_billed_and_recorded_at_the_peak_price(
    harness: Harness,
) -> None:
    # Peak hours all day long (two spans), so that the hour the test runs at does not matter.
    from dataclasses import replace

    from faregate.catalog.peak_hours import PeakPrice
    from faregate.store.rows import attempts_from_json

    strong = harness.pipeline.planner.catalog.models["strong"]
    peak = Price(Decimal(20), Decimal(20))
    strong.offers = [
        replace(strong.offers[0], peak=PeakPrice(peak, ((0, 720), (720, 0)), ("00:00-12:00", "12:00-00:00")))
    ]
    status, _, _ = await harness.post({"model": "strong", "max_tokens": 100, **ASK})
    assert status == 200
    (record,) = harness.records
    billed = peak.cost(Usage(10, 2))
    assert record.cost_usd == billed
    assert harness.events[-2:] == [f"settle {billed} 12", "record"]
    # The hold is the peak price's too: 100 output tokens at 20 alone are more than at 10.
    assert harness.admission.holds[-1].reserved_usd > Price(Decimal(10), Decimal(10)).cost(Usage(20, 100))
    # The record says which price: the stored attempt carries it, as the dashboard shows it.
    stored = orjson.loads(attempts_json(record.attempts))
    assert stored[-1]["price"] == "peak"
    assert attempts_from_json(attempts_json(record.attempts))[-1].at_peak
    harness.events.clear()
    strong.offers = [replace(strong.offers[0], peak=None)]
    await harness.post({"model": "strong", **ASK})
    assert "price" not in orjson.loads(attempts_json(harness.records[-1].attempts))[-1], (
        "only where there is one"
    )


async def test_a_client_that_stops_reading_its_stream_is_cut_at_the_deadline_and_settled(
    harness: Harness,
) -> None:
    """A client that stops reading (a hung process, a TCP window left full) holds the relay in its
    write for as long as the connection stays open; past the request's deadline (and the grace to
    write a stream's end) the connection is dropped, the upstream closed, the hold settled for what
    was read and the request recorded, instead of all of them waiting on the client for ever."""
    harness.pipeline.runner.request_timeout_s = 0.5
    harness.pipeline.respond.request_timeout_s = 0.5
    harness.pipeline.respond.end_grace_s = 0.1
    piece = "lorem ipsum " * 100  # ~1.2 kB of content a chunk: far more than the socket buffers hold
    upstream_closed = asyncio.Event()

    async def stream_reads(call: UpstreamCall) -> AsyncIterator[list[JSON]]:
        harness.a._next(call)
        try:
            yield [chunk({"role": "assistant", "content": ""})]
            for _ in range(8000):
                yield [chunk({"content": piece})]
            await asyncio.Event().wait()  # the rest never comes; only the deadline ends this
            yield []
        finally:
            upstream_closed.set()

    harness.a.stream_reads = stream_reads  # type: ignore[attr-defined]
    harness.events.clear()
    body = orjson.dumps({"model": "cheap", "stream": True, **ASK})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    port = harness.client.server.port
    assert port is not None
    await loop.sock_connect(sock, ("127.0.0.1", port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    try:
        await loop.sock_sendall(sock, head.encode() + body)  # then never reads a byte
        await asyncio.wait_for(upstream_closed.wait(), 30)  # without the cut: never
        for _ in range(500):
            if harness.records:
                break
            await asyncio.sleep(0.01)
    finally:
        sock.close()
    (record,) = harness.records
    assert record.status == 499 and "did not read" in (record.error or ""), record.error
    settled = [e for e in harness.events if e.startswith("settle")]
    assert settled and Decimal(settled[0].split()[1]) > 0 and "release" not in harness.events


class SeamRequest:
    """A request at the HTTP seam as the lean server gives it (server/lean_request.py), whose
    client can go away (`leave`)."""

    def __init__(self, body: JSON) -> None:
        self.headers = {"Authorization": f"Bearer {KEY}"}
        self.body = orjson.dumps(body)
        self.content_length = len(self.body)
        self._gone = asyncio.get_running_loop().create_future()
        self.opened = False

    async def read(self) -> bytes:
        return self.body

    def body_if_whole(self) -> bytes:
        return self.body

    async def open_stream(self, headers: Any) -> Any:
        self.opened = True
        raise ConnectionResetError("the client is gone")

    async def send(self, whole: Whole) -> None:
        pass

    def gone(self) -> asyncio.Future[None]:
        return self._gone

    def abort(self) -> None:
        pass

    def leave(self) -> None:
        self._gone.set_result(None)


async def test_a_client_gone_while_its_stream_is_held_back_ends_the_upstream_call_and_is_billed(
    harness: Harness,
) -> None:
    """The stream is held back until its first content, and a reasoning model may think for
    minutes first: a client gone meanwhile ends the upstream call then (not at its first content,
    which it went on generating and billing for nobody), and is charged for what had been read."""
    thinking = "Let me think about this carefully, step by step, before answering. " * 40
    reading = asyncio.Event()
    upstream_closed = asyncio.Event()

    async def stream_reads(call: UpstreamCall) -> AsyncIterator[list[JSON]]:
        harness.a._next(call)
        try:
            yield [chunk({"role": "assistant", "content": ""})]
            yield [chunk({"reasoning_content": piece + " "}) for piece in thinking.split(" ")]
            reading.set()
            await asyncio.Event().wait()  # still thinking: the first content is minutes away
            yield [chunk({"content": "42"}), chunk({}, "stop")]
        finally:
            upstream_closed.set()

    harness.a.stream_reads = stream_reads  # type: ignore[attr-defined]
    harness.events.clear()
    http = SeamRequest({"model": "cheap", "stream": True, **ASK})
    serving = asyncio.create_task(harness.pipeline.serve(http))
    await asyncio.wait_for(reading.wait(), 5)
    http.leave()
    reply = await asyncio.wait_for(serving, 10)  # without the watch: never (the think goes on)
    assert upstream_closed.is_set() and not http.opened
    assert isinstance(reply, Whole) and reply.status == 499
    (record,) = harness.records
    assert record.status == 499 and "before its stream started" in (record.error or "")
    (attempt,) = record.attempts
    assert attempt.outcome == "client_gone" and attempt.completion_tokens >= 400  # ~480 words
    assert record.cost_usd == attempt.cost > 0 and record.usage_estimated
    settled = [e for e in harness.events if e.startswith("settle")]
    assert settled and Decimal(settled[0].split()[1]) == record.cost_usd, harness.events
