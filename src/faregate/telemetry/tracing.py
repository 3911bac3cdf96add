"""Optional OpenTelemetry traces: one span per request (named after its endpoint), one child span
per upstream attempt. A request that carries a W3C `traceparent` (and `tracestate`) header is
traced in its caller's trace, under the caller's span, sampled or not as the caller says.

Off unless `tracing.otlp_endpoint` is set; needs the `otel` extra
(`pip install 'faregate[otel]'`: opentelemetry-sdk and the OTLP/HTTP exporter).

Spans are built from the finished request record by a pipeline listener, with the
record's own start time and durations, so tracing adds no code to the request path and
nothing when it is off. The SDK's batch processor exports from its own thread. Attempt
spans carry their exact durations; their start offsets are laid end to end from the
request's start, because the record does not keep the backoff pauses between them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from faregate.config import TracingSettings
from faregate.config.env_refs import expanded_headers
from faregate.errors import ConfigError
from faregate.types import ANSWERED_OUTCOMES, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("faregate.tracing")

NS_PER_MS = 1_000_000
# The request span's name per wire (the endpoint it came in on); chat completions by default.
SPAN_NAMES = {"messages": "messages", "responses": "responses", "embeddings": "embeddings"}


class RequestTracer:
    def __init__(self, settings: TracingSettings) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ConfigError(
                "tracing.otlp_endpoint is set but OpenTelemetry is not installed: "
                "pip install 'faregate[otel]'"
            ) from exc
        if not settings.otlp_endpoint:
            raise ConfigError("tracing.otlp_endpoint is not set")
        self._trace = trace
        self._provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            # A caller's trace is sampled as the caller decided (its traceparent's flag); the
            # ratio decides for the traces the gateway starts.
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self._propagator = TraceContextTextMapPropagator()
        try:
            headers = expanded_headers(settings.headers)  # `${NAME}`: the variable's value
        except ValueError as exc:
            raise ConfigError(f"tracing: {exc}") from None
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, headers=headers)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("faregate")

    def observe(self, record: RequestRecord) -> None:
        """The pipeline listener. Never raises."""
        try:
            self._observe(record)
        except Exception:
            log.exception("could not trace request %s", record.request_id)

    def _observe(self, record: RequestRecord) -> None:
        trace = self._trace
        start = int(record.created_at * 1e9)
        caller = None
        if record.traceparent is not None:
            carrier = {"traceparent": record.traceparent}
            if record.tracestate is not None:
                carrier["tracestate"] = record.tracestate
            caller = self._propagator.extract(carrier)  # an invalid one: no parent, a new trace
        span = self._tracer.start_span(
            SPAN_NAMES.get(record.wire, "chat.completions"),
            context=caller,
            kind=trace.SpanKind.SERVER,
            start_time=start,
            attributes={
                "faregate.request_id": record.request_id,
                "faregate.wire": record.wire,
                "gen_ai.operation.name": "embeddings" if record.wire == "embeddings" else "chat",
                "faregate.route": record.route or "",
                "faregate.key_id": record.key_id or "",
                "faregate.cache": record.cache_status,
                "faregate.cost_usd": float(record.cost_usd),
                "faregate.baseline_cost_usd": float(record.baseline_cost_usd),
                "faregate.empty_response": record.empty_response,
                "gen_ai.request.model": record.model_requested,
                "gen_ai.response.model": record.model_used or "",
                "gen_ai.provider.name": record.provider or "",
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.response.status_code": record.status,
            },
        )
        if record.ttft_ms is not None:
            span.set_attribute("faregate.ttft_ms", record.ttft_ms)
        if not span.is_recording():  # sampled out
            span.end(start + int(record.latency_ms * NS_PER_MS))
            return
        parent = trace.set_span_in_context(span)
        offset = start
        for number, attempt in enumerate(record.attempts, 1):
            duration = int(attempt.latency_ms * NS_PER_MS)
            child = self._tracer.start_span(
                f"upstream {attempt.provider}",
                context=parent,
                kind=trace.SpanKind.CLIENT,
                start_time=offset,
                attributes={
                    "faregate.attempt": number,
                    "faregate.outcome": attempt.outcome,
                    "gen_ai.request.model": attempt.model,
                    "gen_ai.provider.name": attempt.provider,
                },
            )
            if attempt.status is not None:
                child.set_attribute("http.response.status_code", attempt.status)
            if attempt.outcome not in ANSWERED_OUTCOMES:
                child.set_status(trace.Status(trace.StatusCode.ERROR, attempt.detail or attempt.outcome))
            child.end(offset + duration)
            offset += duration
        if record.status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, record.error or str(record.status)))
        span.end(start + int(record.latency_ms * NS_PER_MS))

    async def close(self) -> None:
        """Export what is buffered and stop (the SDK blocks, so off the event loop)."""
        await asyncio.to_thread(self._provider.shutdown)
