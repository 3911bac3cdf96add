"""The request path, top to bottom in one place:

authenticate -> parse -> plan (routing) -> attempt loop -> settle and record -> respond.

Each stage is a small function or object with one job; this module only wires
them together and makes sure every request is recorded exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from faregate.accounts.admission import Admission, Hold, OpenAdmission
from faregate.accounts.keys import ApiKey, KeyStore
from faregate.cache.service import (
    CachedAnswer,
    CacheDecision,
    ResponseCache,
    answer_from_stream,
    stream_frames,
)
from faregate.errors import (
    AuthenticationFailed,
    FaregateError,
    InternalError,
    PayloadTooLarge,
    UpstreamFailed,
    UpstreamRejected,
)
from faregate.routing.attempts import AttemptRunner, OpenedStream, Served, billed_cost
from faregate.routing.cascading import CascadeRunner
from faregate.routing.plan import Candidate, Plan, Planner
from faregate.routing.worst_case import worst_case
from faregate.server.parse import decode_json_object, new_request_id, parse_chat_request
from faregate.server.streaming import DONE, StreamOutcome, error_event, relay, sse_frame
from faregate.telemetry.records import RecordWriter
from faregate.tokens import estimate_usage
from faregate.types import (
    JSON,
    Attempt,
    ChatRequest,
    Completion,
    Price,
    RequestRecord,
    Usage,
    completion_text,
)

log = logging.getLogger("faregate.pipeline")

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
        body=orjson.dumps(error.to_openai()),
        content_type=JSON_TYPE,
        headers={**error.headers, **(headers or {})},
    )


@dataclass(slots=True)
class Settled:
    usage: Usage
    cost: Decimal


class ChatPipeline:
    def __init__(
        self,
        *,
        keys: KeyStore,
        planner: Planner,
        runner: AttemptRunner,
        records: RecordWriter,
        max_body_bytes: int,
        baseline: Price,
        admission: Admission | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.keys = keys
        self.planner = planner
        self.runner = runner
        self.records = records
        self.max_body_bytes = max_body_bytes
        self.baseline = baseline
        self.admission: Admission = admission or OpenAdmission()
        # Without metering there is nothing to reserve: skip the worst-case estimate entirely.
        self.metered = not isinstance(self.admission, OpenAdmission)
        self.cache = cache
        self.cascades = CascadeRunner(runner, planner)
        # Called with every finished record (metrics, alerts); must be cheap and never raise.
        self.listeners: list[Callable[[RequestRecord], None]] = []

    # -- stages -------------------------------------------------------------------------

    async def authenticate(self, http_request: web.Request) -> ApiKey:
        header = http_request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer fg-...'.",
                code="missing_api_key",
            )
        key = await self.keys.verify(raw.strip())
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return key

    async def read_body(self, http_request: web.Request) -> JSON:
        length = http_request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body is {length} bytes; the limit is {self.max_body_bytes} bytes."
            )
        try:
            raw = await http_request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"Request body is larger than the limit of {self.max_body_bytes} bytes."
            ) from None
        if len(raw) > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body is {len(raw)} bytes; the limit is {self.max_body_bytes} bytes."
            )
        return decode_json_object(raw)

    async def settle(
        self,
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

    # -- the handler --------------------------------------------------------------------

    async def handle(self, http_request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        record = RequestRecord(
            request_id=request_id,
            created_at=time.time(),
            key_id=None,
            model_requested="",
            model_used=None,
            provider=None,
            status=200,
            stream=False,
        )
        started = time.perf_counter()
        base_headers = {"x-faregate-request-id": request_id}
        hold: Hold | None = None
        try:
            key = await self.authenticate(http_request)
            record.key_id = key.id
            body = await self.read_body(http_request)
            record.model_requested = str(body.get("model") or "")[:200]
            request = parse_chat_request(body, http_request.headers, request_id)
            request.key_id = key.id
            request.premium = key.premium
            request.started = started
            record.stream = request.stream
            decision = self._cache_decision(request, http_request.headers)
            record.cache_status = "bypass" if decision.status == "bypass" else "miss"
            base_headers["x-faregate-cache"] = record.cache_status
            if self.cache is not None:
                cached = await self.cache.lookup(decision, request)
                if cached is not None:
                    record.route = decision.resolved
                    return await self._serve_cached(http_request, request, cached, record, base_headers)
            plan = await self.planner.plan(request)
            record.route = plan.route
            base_headers["x-faregate-route"] = plan.route
            if plan.trace.router_choice is not None:
                score = plan.trace.router_score
                base_headers["x-faregate-router-score"] = "failed" if score is None else f"{score:.4f}"
            if self.metered:
                worst, tokens_held = await worst_case(plan, request)
                hold = await self.admission.admit(key, request, worst, tokens_held)
                base_headers.update(hold.headers)
            if plan.stages:
                return await self._cascade(http_request, request, plan, record, base_headers, decision)
            if request.stream:
                opened = await self.runner.open_stream(request, plan)
                return await self._stream(http_request, request, opened, record, base_headers, decision)
            served = await self.runner.complete(request, plan)
            record.attempts = served.attempts
            return await self._respond(
                request, served.completion, served.candidate, record, base_headers, decision
            )
        except FaregateError as error:
            record.status = error.status
            record.error = error.message[:2000]
            attempts = getattr(error, "attempts", None)
            if attempts:
                record.attempts = attempts
                base_headers["x-faregate-attempts"] = str(len(attempts))
                # A failed attempt the provider billed (a blank 200) is still money spent.
                record.cost_usd = billed_cost(attempts)
            return error_response(error, base_headers)
        except Exception as exc:
            # A bug of ours: the client gets a clean 500 without internals, the log gets the trace.
            log.exception("unhandled error in request %s", request_id)
            record.status = 500
            record.error = f"internal error: {type(exc).__name__}"
            return error_response(
                InternalError("The gateway hit an internal error; it has been logged."), base_headers
            )
        finally:
            record.latency_ms = (time.perf_counter() - started) * 1000
            record.baseline_cost_usd = self.baseline.cost(
                Usage(record.prompt_tokens, record.completion_tokens)
            )
            if hold is not None:
                await self._close_hold(hold, record)
            self.records.submit(record)
            for listener in self.listeners:
                try:
                    listener(record)
                except Exception:
                    # Metrics must never cost a client its answer.
                    log.exception("a record listener failed")

    async def _respond(
        self,
        request: ChatRequest,
        completion: Completion,
        candidate: Candidate,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.Response:
        body = completion.body
        text = "" if completion.usage is not None else completion_text(body)
        settled = await self.settle(candidate, request, completion.usage, text, record.attempts)
        body["model"] = candidate.model.name
        body["usage"] = usage_json(body.get("usage"), settled.usage, settled.cost)
        self._fill_record(record, candidate, settled)
        headers.update(self._result_headers(candidate, record, settled.cost))
        if self.cache is not None and not settled.usage.estimated:
            self.cache.remember(
                decision, request, body, candidate.model.name, candidate.offer.provider, settled.usage
            )
        return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers)

    async def _stream(
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
            await _aclose(opened)
            record.status = 499
            record.error = "client disconnected before the stream started"
            settled = await self.settle(candidate, request, None, "", opened.attempts)
            self._fill_record(record, candidate, settled)
            return response
        outcome = await relay(http_request, response, request, opened, candidate.model.name)
        self.runner.stream_finished(opened, outcome.failure)
        if outcome.first_content_at is not None:
            record.ttft_ms = (outcome.first_content_at - request.started) * 1000
        settled = await self.settle(candidate, request, outcome.usage, "".join(outcome.text), opened.attempts)
        self._fill_record(record, candidate, settled)
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
                    await response.write(
                        sse_frame(self._usage_chunk(outcome.usage_chunk, candidate, settled))
                    )
                await response.write(DONE)
                self._remember_stream(decision, request, opened, outcome, settled)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            record.status = 499
            record.error = "client disconnected at the end of the stream"
        return response

    # -- cascades -----------------------------------------------------------------------

    async def _cascade(
        self,
        http_request: web.Request,
        request: ChatRequest,
        plan: Plan,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.StreamResponse:
        """Judged steps first; an accepted answer is served as it is (replayed as SSE for a stream),
        else the last step runs like any plan. Every call made is in the attempts, and billed."""
        judged = await self.cascades.judged_steps(request, plan)
        headers["x-faregate-cascade"] = (
            f"{'accepted' if judged.served else 'escalated'}; escalations={judged.escalations}"
        )
        if judged.verdicts:
            headers["x-faregate-judge"] = header_text(judged.verdicts[-1])
        if judged.served is not None:
            served = judged.served
            record.attempts = served.attempts
            if request.stream:
                return await self._stream_whole(http_request, request, served, record, headers, decision)
            completion, candidate = served.completion, served.candidate
            return await self._respond(request, completion, candidate, record, headers, decision)
        last = plan.stage(len(plan.stages) - 1)
        try:
            if request.stream:
                opened = await self.runner.open_stream(request, last)
                opened.attempts[:0] = judged.attempts
                return await self._stream(http_request, request, opened, record, headers, decision)
            served = await self.runner.complete(request, last)
        except UpstreamFailed as failed:
            every = [*judged.attempts, *failed.attempts]
            listed = "; ".join(f"{i}. {a.describe()}" for i, a in enumerate(every, 1))
            raise UpstreamFailed(
                every,
                timeout=failed.status == 504,
                message=f"The cascade's last step failed ({len(every)} attempt(s) in all): {listed}",
            ) from None
        except UpstreamRejected as rejected:
            rejected.attempts = [*judged.attempts, *getattr(rejected, "attempts", [])]  # type: ignore[attr-defined]
            raise
        served.attempts[:0] = judged.attempts
        record.attempts = served.attempts
        return await self._respond(request, served.completion, served.candidate, record, headers, decision)

    async def _stream_whole(
        self,
        http_request: web.Request,
        request: ChatRequest,
        served: Served,
        record: RequestRecord,
        headers: dict[str, str],
        decision: CacheDecision,
    ) -> web.StreamResponse:
        """A whole answer sent as a stream (a cascade answer, judged before it could be sent)."""
        candidate, body = served.candidate, served.completion.body
        text = "" if served.completion.usage is not None else completion_text(body)
        settled = await self.settle(candidate, request, served.completion.usage, text, record.attempts)
        body["model"] = candidate.model.name
        self._fill_record(record, candidate, settled)
        headers.update(self._result_headers(candidate, record, settled.cost))
        if self.cache is not None and not settled.usage.estimated:
            self.cache.remember(
                decision, request, body, candidate.model.name, candidate.offer.provider, settled.usage
            )
        usage = usage_json(body.get("usage"), settled.usage, settled.cost)
        return await self._write_whole_stream(http_request, request, body, usage, record, headers)

    async def _write_whole_stream(
        self,
        http_request: web.Request,
        request: ChatRequest,
        body: JSON,
        usage: JSON,
        record: RequestRecord,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={**headers, "Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        try:
            await response.prepare(http_request)
            for frame in stream_frames(body, request.include_usage):
                await response.write(sse_frame(frame))
                if record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - request.started) * 1000
            if request.include_usage:
                final = {key: body.get(key) for key in ("id", "created", "model")}
                final.update(object="chat.completion.chunk", choices=[], usage=usage)
                await response.write(sse_frame(final))
            await response.write(DONE)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            record.status = 499
            record.error = "client disconnected during the stream"
        return response

    # -- the cache ----------------------------------------------------------------------

    def _cache_decision(self, request: ChatRequest, headers: Any) -> CacheDecision:
        if self.cache is None:
            return CacheDecision("bypass", reason="no cache")
        return self.cache.decide(request, headers, lambda: self.planner.resolved_name(request))

    def _remember_stream(
        self,
        decision: CacheDecision,
        request: ChatRequest,
        opened: OpenedStream,
        outcome: StreamOutcome,
        settled: Settled,
    ) -> None:
        if self.cache is None or outcome.tool_calls or settled.usage.estimated:
            return
        model = opened.candidate.model.name
        first = opened.buffered[0] if opened.buffered else None
        body = answer_from_stream(first, "".join(outcome.text), outcome.finish_reason, model, settled.usage)
        if body is not None:
            self.cache.remember(
                decision, request, body, model, opened.candidate.offer.provider, settled.usage
            )

    async def _serve_cached(
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
        usage = usage_json(None, cached.usage, Decimal(0))
        body = dict(cached.body)
        if not request.stream:
            body["usage"] = usage
            return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE, headers=headers)
        return await self._write_whole_stream(http_request, request, body, usage, record, headers)

    # -- helpers ------------------------------------------------------------------------

    async def _close_hold(self, hold: Hold, record: RequestRecord) -> None:
        """Settle what was spent (even on a failed request: billed failed attempts), else release."""
        try:
            if record.cost_usd > 0 or record.completion_tokens or record.prompt_tokens:
                await self.admission.settle(
                    hold, record.cost_usd, record.prompt_tokens + record.completion_tokens
                )
            else:
                await self.admission.release(hold)
        except Exception:
            # Never lose the record over this; the reservation expires and is audited.
            log.exception("could not settle the reservation of request %s", record.request_id)

    def _usage_chunk(self, chunk: JSON | None, candidate: Candidate, settled: Settled) -> JSON:
        base: JSON = chunk or {
            "id": "chatcmpl-" + "faregate",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "choices": [],
        }
        base["model"] = candidate.model.name
        base["usage"] = usage_json(base.get("usage"), settled.usage, settled.cost)
        return base

    @staticmethod
    def _fill_record(record: RequestRecord, candidate: Candidate, settled: Settled) -> None:
        record.model_used = candidate.model.name
        record.provider = candidate.offer.provider
        record.prompt_tokens = settled.usage.prompt_tokens
        record.completion_tokens = settled.usage.completion_tokens
        record.usage_estimated = settled.usage.estimated
        record.cost_usd = settled.cost
        record.empty_response = settled.usage.completion_tokens == 0

    @staticmethod
    def _result_headers(candidate: Candidate, record: RequestRecord, cost: Decimal) -> dict[str, str]:
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


def usage_json(upstream: Any, usage: Usage, cost: Decimal) -> JSON:
    """The `usage` object a client sees: the upstream's (details kept) with our counts and the cost."""
    out: JSON = dict(upstream) if isinstance(upstream, dict) else {}
    out.update(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost=float(cost),
    )
    if usage.estimated:
        out["estimated"] = True
    return out


async def _aclose(opened: OpenedStream) -> None:
    closer = getattr(opened.rest, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            pass
