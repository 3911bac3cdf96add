"""OpenTelemetry traces exported over OTLP/HTTP to a local receiver: one span per request, one per attempt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service

from faregate.config import TracingSettings
from faregate.telemetry.tracing import RequestTracer
from faregate.types import Attempt, Price, RequestRecord


@asynccontextmanager
async def otlp_receiver(traces: Handler) -> AsyncIterator[str]:
    """A local OTLP/HTTP receiver whose POST /v1/traces is `traces`: its traces URL."""
    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/v1/traces"
    finally:
        await runner.cleanup()


@pytest.fixture()
async def collector() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def traces(request: web.Request) -> web.Response:
        message = trace_service.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async with otlp_receiver(traces) as url:
        yield url, received


async def test_a_request_becomes_a_span_with_a_child_per_attempt(collector: tuple[str, list[Any]]) -> None:
    url, received = collector
    tracer = RequestTracer(TracingSettings(otlp_endpoint=url, service_name="faregate-test"))
    tracer.observe(
        RequestRecord(
            request_id="req_1",
            created_at=1_700_000_000.0,
            key_id="k1",
            model_requested="cheap",
            model_used="B",
            provider="p2",
            status=200,
            stream=False,
            route="cheap",
            prompt_tokens=12,
            completion_tokens=34,
            cost_usd=Decimal("0.0001"),
            latency_ms=350.0,
            attempts=[
                Attempt("A", "p1", "timeout", 200.0, detail="no answer"),
                Attempt("B", "p2", "ok", 140.0),
            ],
        )
    )
    await tracer.close()  # flushes the batch
    spans = [s for m in received for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 3
    root = next(s for s in spans if s.name == "chat.completions")
    children = sorted((s for s in spans if s.parent_span_id), key=lambda s: s.start_time_unix_nano)
    assert [c.name for c in children] == ["upstream p1", "upstream p2"]
    assert all(c.trace_id == root.trace_id and c.parent_span_id == root.span_id for c in children)
    assert root.end_time_unix_nano - root.start_time_unix_nano == 350_000_000
    assert children[0].end_time_unix_nano - children[0].start_time_unix_nano == 200_000_000
    assert children[0].status.code == 2  # ERROR
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["faregate.request_id"].string_value == "req_1"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 34
    resource = {
        a.key: a.value.string_value
        for m in received
        for rs in m.resource_spans
        for a in rs.resource.attributes
    }
    assert resource["service.name"] == "faregate-test"


async def test_each_wire_names_its_span(collector: tuple[str, list[Any]]) -> None:
    """An embeddings request (or an Anthropic Messages or Responses one) is not traced as a chat
    completion: the span is named after the endpoint and says its wire and GenAI operation."""
    url, received = collector
    tracer = RequestTracer(TracingSettings(otlp_endpoint=url))
    for n, wire in enumerate(("chat", "messages", "responses", "embeddings")):
        tracer.observe(replace(traced(f"req_{wire}", None), created_at=1_700_000_000.0 + n, wire=wire))
    await tracer.close()
    spans = [s for m in received for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans]
    roots = {
        s.name: {a.key: a.value.string_value for a in s.attributes} for s in spans if not s.parent_span_id
    }
    assert sorted(roots) == ["chat.completions", "embeddings", "messages", "responses"]
    assert {name: (a["faregate.wire"], a["gen_ai.operation.name"]) for name, a in roots.items()} == {
        "chat.completions": ("chat", "chat"),
        "messages": ("messages", "chat"),
        "responses": ("responses", "chat"),
        "embeddings": ("embeddings", "embeddings"),
    }


def test_an_endpoint_that_cannot_take_traces_is_refused_at_load() -> None:
    """The OTLP/HTTP exporter posts to the URL as given: without a scheme (a gRPC-style
    `collector:4318`) every batch failed, and without a path (the collector's base URL) every batch
    was a 404, each an error line while every span was dropped. Both are one line at start-up."""
    from faregate.config import ConfigError, parse_settings

    ok = parse_settings({"tracing": {"otlp_endpoint": "https://otel.example.com:4318/v1/traces"}})
    assert ok.tracing.otlp_endpoint == "https://otel.example.com:4318/v1/traces"
    for endpoint, problem in (
        ("127.0.0.1:4318", "must start with http:// or https://"),
        ("otel-collector:4318/v1/traces", "must start with http:// or https://"),
        ("http://127.0.0.1:4318", r"must be the traces URL \(http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", r"must be the traces URL \(http://127.0.0.1:4318/v1/traces"),
    ):
        with pytest.raises(ConfigError, match=f"tracing.otlp_endpoint {problem}"):
            parse_settings({"tracing": {"otlp_endpoint": endpoint}})


CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def traced(request_id: str, traceparent: str | None, tracestate: str | None = None) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        created_at=1_700_000_000.0,
        key_id="k1",
        model_requested="m",
        model_used="m",
        provider="p",
        status=200,
        stream=False,
        latency_ms=10.0,
        attempts=[Attempt("m", "p", "ok", 9.0)],
        traceparent=traceparent,
        tracestate=tracestate,
    )


async def test_a_request_with_a_traceparent_continues_the_callers_trace(
    collector: tuple[str, list[Any]],
) -> None:
    """A caller that traces its own work (W3C Trace Context) sees the gateway's span, and its
    attempts, under its own span in its own trace, not as a trace of their own. A traceparent
    that is not one starts a new trace, as none does; a caller that sampled its trace out is
    followed (no span), whatever the gateway's own ratio."""
    url, received = collector
    tracer = RequestTracer(TracingSettings(otlp_endpoint=url))
    tracer.observe(traced("req_child", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "vendor=abc"))
    tracer.observe(traced("req_bad", "00-not-a-trace-01"))
    tracer.observe(traced("req_none", None))
    tracer.observe(traced("req_unsampled", f"00-{'1' * 32}-{CALLER_SPAN}-00"))
    await tracer.close()
    spans = [s for m in received for rs in m.resource_spans for ss in rs.scope_spans for s in ss.spans]
    roots = {
        next(a.value.string_value for a in s.attributes if a.key == "faregate.request_id"): s
        for s in spans
        if s.name == "chat.completions"
    }
    assert sorted(roots) == ["req_bad", "req_child", "req_none"]
    child = roots["req_child"]
    assert (child.trace_id.hex(), child.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    assert child.trace_state == "vendor=abc"
    attempt = next(s for s in spans if s.trace_id == child.trace_id and s.name == "upstream p")
    assert attempt.parent_span_id == child.span_id
    for name in ("req_bad", "req_none"):
        assert not roots[name].parent_span_id and roots[name].trace_id.hex() != CALLER_TRACE


def test_the_record_keeps_the_callers_trace_context() -> None:
    from types import SimpleNamespace
    from typing import cast

    from faregate.server.exchange import Exchange

    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=abc"}
    baseline = Price(Decimal(1), Decimal(1))
    record = Exchange.begin(cast(Any, SimpleNamespace(headers=headers)), baseline).record
    assert (record.traceparent, record.tracestate) == (headers["traceparent"], "vendor=abc")
    assert Exchange.begin(cast(Any, SimpleNamespace(headers={})), baseline).record.traceparent is None


def test_a_tracing_header_naming_an_unset_variable_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`${NAME}` in tracing.headers (a collector's token) is the variable's value, as in a
    provider's headers; one not set is refused at start, not sent as text."""
    from faregate.errors import ConfigError

    monkeypatch.delenv("FAREGATE_TEST_OTLP_TOKEN", raising=False)
    settings = TracingSettings(
        otlp_endpoint="http://127.0.0.1:9/v1/traces",
        headers={"Authorization": "Bearer ${FAREGATE_TEST_OTLP_TOKEN}"},
    )
    with pytest.raises(ConfigError, match=r"tracing: header Authorization: \$\{FAREGATE_TEST_OTLP_TOKEN\}"):
        RequestTracer(settings)


async def test_a_tracing_header_takes_its_value_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str | None] = []

    async def traces(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"", content_type="application/x-protobuf")

    monkeypatch.setenv("FAREGATE_TEST_OTLP_TOKEN", "otlp-secret")
    async with otlp_receiver(traces) as url:
        tracer = RequestTracer(
            TracingSettings(
                otlp_endpoint=url, headers={"Authorization": "Bearer ${FAREGATE_TEST_OTLP_TOKEN}"}
            )
        )
        tracer.observe(traced("req_env", None))
        await tracer.close()
    assert seen == ["Bearer otlp-secret"]
