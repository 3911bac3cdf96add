"""How an answer leaves the gateway: a JSON body, a relayed stream, or a whole answer sent as a
stream (a cache hit; a cascade answer judged before it could be sent), with its cost settled and
written into the request's record on the way out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

import orjson
from aiohttp import web

from faregate.cache.service import CachedAnswer, CacheDecision, ResponseCache
from faregate.errors import FaregateError
from faregate.providers.base import aclose_quietly
from faregate.routing.attempts import AttemptRunner, OpenedStream, Served, billed_cost
from faregate.routing.plan import Candidate
from faregate.server.streaming import StreamOutcome, relay
from faregate.tokens import estimate_usage
from faregate.types import JSON, Attempt, ChatRequest, Completion, RequestRecord, Usage
from faregate.wire.openai import (
    DONE,
    answer_as_chunks,
    answer_text,
    error_body,
    error_event,
    price_answer,
    sse_frame,
    usage_chunk,
    usage_json,
)

JSON_TYPE = "application/json"


def money(value: Decimal) -> str:
    """Exact decimal text for headers (no exponent, no float rounding)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def error_response(error: FaregateError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=error.status,
        body=orjson.dumps(error_body(error)),
        content_type=JSON_TYPE,
        headers={**error.headers, **(headers or {})},
    )


@dataclass(slots=True)
class Settled:
    usage: Usage
    cost: Decimal


async def settle(
    candidate: Candidate,
    request: ChatRequest,
    usage: Usage | None,
    text: str,
    attempts: list[Attempt],
) -> Settled:
    """The cost of the served attempt, from the provider's usage (estimated when it gave none),
    plus whatever failed attempts the provider billed."""
    if usage is None:
        usage = await estimate_usage(request, text)
    return Settled(usage, candidate.offer.price.cost(usage) + billed_cost(attempts))


def fill_record(record: RequestRecord, candidate: Candidate, settled: Settled) -> None:
    record.model_used = candidate.model.name
    record.provider = candidate.offer.provider
    record.prompt_tokens = settled.usage.prompt_tokens
    record.completion_tokens = settled.usage.completion_tokens
    record.usage_estimated = settled.usage.estimated
    record.cost_usd = settled.cost
    record.empty_response = settled.usage.completion_tokens == 0


def result_headers(candidate: Candidate, record: RequestRecord, cost: Decimal) -> dict[str, str]:
    return {
        "x-faregate-cost-usd": money(cost),
        "x-faregate-model": candidate.model.name,
        "x-faregate-provider": candidate.offer.provider,
        "x-faregate-attempts": str(len(record.attempts)),
    }


def header_text(text: str, limit: int = 300) -> str:
    """A header value: one line of printable ASCII (a judge's reason may hold anything)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit]


class Responder:
    """Writes answers out; the cache learns from the ones it may keep."""

    def __init__(self, runner: AttemptRunner, cache: ResponseCache | None) -> None:
        self.runner = runner
        self.cache = cache

    async def _settle_whole(
        self,
        request: ChatRequest,
        completion: Completion,
        candidate: Candidate,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> JSON:
        """Cost a whole answer, write it into the record and the headers, let the cache keep it;
        the body, its model and usage set as the client sees them."""
        body = completion.body
        text = "" if completion.usage is not None else answer_text(body)
        settled = await settle(candidate, request, completion.usage, text, record.attempts)
        price_answer(body, candidate.model.name, settled.usage, settled.cost)
        fill_record(record, candidate, settled)
        headers.update(result_headers(candidate, record, settled.cost))
        if self.cache is not None and not settled.usage.estimated:
            self.cache.remember(
                decision, request, body, candidate.model.name, candidate.offer.provider, settled.usage
            )
        return body

    async def whole(
        self,
        request: ChatRequest,
        completion: Completion,
        candidate: Candidate,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.Response:
        body = await self._settle_whole(request, completion, candidate, record, headers, decision)
        return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers)

    async def whole_as_stream(
        self,
        http_request: web.Request,
        request: ChatRequest,
        served: Served,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.StreamResponse:
        """A whole answer sent as a stream (a cascade answer, judged before it could be sent)."""
        body = await self._settle_whole(
            request, served.completion, served.candidate, record, headers, decision
        )
        return await self.write_whole_stream(http_request, request, body, record, headers)

    async def stream(
        self,
        http_request: web.Request,
        request: ChatRequest,
        opened: OpenedStream,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.StreamResponse:
        candidate = opened.candidate
        record.attempts = opened.attempts
        headers.update(
            {
                "x-faregate-model": candidate.model.name,
                "x-faregate-provider": candidate.offer.provider,
                "x-faregate-attempts": str(len(opened.attempts)),
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        try:
            await response.prepare(http_request)
        except (ConnectionResetError, ConnectionError):
            await aclose_quietly(opened.rest)
            record.status = 499
            record.error = "client disconnected before the stream started"
            settled = await settle(candidate, request, None, "", opened.attempts)
            fill_record(record, candidate, settled)
            return response
        outcome = await relay(http_request, response, request, opened, candidate.model.name)
        self.runner.stream_finished(opened, outcome.failure, request.key_id)
        if outcome.first_content_at is not None:
            record.ttft_ms = (outcome.first_content_at - request.started) * 1000
        seen = outcome.seen
        settled = await settle(candidate, request, seen.usage, "".join(seen.text), opened.attempts)
        fill_record(record, candidate, settled)
        if outcome.client_gone:
            record.status = 499
            record.error = "client disconnected during the stream"
            return response
        try:
            if outcome.failure is not None:
                record.status = 502
                record.error = f"stream interrupted after content was sent: {outcome.failure.detail}"
                opened.attempts[-1].outcome = outcome.failure.kind
                opened.attempts[-1].detail = outcome.failure.detail
                await response.write(
                    error_event(
                        f"The upstream stream from {candidate.offer.provider} ({candidate.model.name}) "
                        f"failed after content was sent: {outcome.failure.detail}",
                        "stream_interrupted",
                    )
                )
            else:
                if request.include_usage:
                    final = usage_chunk(seen.usage_chunk, candidate.model.name, settled.usage, settled.cost)
                    await response.write(sse_frame(final))
                await response.write(DONE)
                self._remember_stream(decision, request, opened, outcome, settled)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            record.status = 499
            record.error = "client disconnected at the end of the stream"
        return response

    async def write_whole_stream(
        self,
        http_request: web.Request,
        request: ChatRequest,
        body: JSON,
        record: RequestRecord,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        try:
            await response.prepare(http_request)
            for frame in answer_as_chunks(body, body["usage"] if request.include_usage else None):
                await response.write(sse_frame(frame))
                if record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - request.started) * 1000
            await response.write(DONE)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            record.status = 499
            record.error = "client disconnected during the stream"
        return response

    async def cached(
        self,
        http_request: web.Request,
        request: ChatRequest,
        cached: CachedAnswer,
        record: RequestRecord,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """A hit costs nothing; the record keeps the usage so the whole baseline counts as saved."""
        record.cache_status = cached.kind
        record.model_used = cached.model
        record.provider = cached.provider
        record.prompt_tokens = cached.usage.prompt_tokens
        record.completion_tokens = cached.usage.completion_tokens
        record.cost_usd = Decimal(0)
        headers.update(
            {
                "x-faregate-cache": cached.kind,
                "x-faregate-cost-usd": "0",
                "x-faregate-model": cached.model,
                "x-faregate-provider": cached.provider,
                "x-faregate-attempts": "0",
                "x-faregate-route": record.route or "",
            }
        )
        body = dict(cached.body)
        body["usage"] = usage_json(None, cached.usage, Decimal(0))
        if not request.stream:
            return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers)
        return await self.write_whole_stream(http_request, request, body, record, headers)

    def _remember_stream(
        self,
        decision: CacheDecision,
        request: ChatRequest,
        opened: OpenedStream,
        outcome: StreamOutcome,
        settled: Settled,
    ) -> None:
        if self.cache is None or settled.usage.estimated:
            return
        model = opened.candidate.model.name
        body = outcome.seen.answer(model, settled.usage)
        if body is not None:
            self.cache.remember(
                decision, request, body, model, opened.candidate.offer.provider, settled.usage
            )
