"""The request path, top to bottom in one place:

authenticate -> parse -> plan (routing) -> attempt loop -> settle and record -> respond.

Each stage is a small function or object with one job; this module only wires
them together and makes sure every request is recorded exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from faregate.accounts.admission import Admission, Hold, OpenAdmission
from faregate.accounts.keys import ApiKey, KeyStore
from faregate.cache.service import (
    CacheDecision,
    ResponseCache,
)
from faregate.config import LimitsSettings
from faregate.errors import (
    AuthenticationFailed,
    FaregateError,
    InternalError,
    PayloadTooLarge,
    UpstreamFailed,
    UpstreamRejected,
)
from faregate.routing.attempts import AttemptRunner, billed_cost
from faregate.routing.cascade_runner import CascadeRunner
from faregate.routing.plan import Plan, Planner
from faregate.routing.worst_case import worst_case
from faregate.server.parse import decode_json_object, new_request_id, parse_chat_request
from faregate.server.responses import Responder, error_response, header_text
from faregate.store.outage import outage_error
from faregate.telemetry.records import RecordWriter
from faregate.types import (
    JSON,
    ChatRequest,
    Price,
    RequestRecord,
    Usage,
)

log = logging.getLogger("faregate.pipeline")


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
        limits: LimitsSettings | None = None,
    ) -> None:
        self.keys = keys
        self.limits = limits or LimitsSettings()
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
        self.respond = Responder(runner, cache)
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
        return decode_json_object(raw, self.limits.max_json_depth)

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
            request = parse_chat_request(body, http_request.headers, request_id, self.limits)
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
                    # Named as a miss names it: one route is one row on the dashboard.
                    record.route = self.planner.requested_route(request)
                    # Free, but still a request: it counts against the key's requests per minute.
                    base_headers.update(await self.admission.count_hit(key, request))
                    return await self.respond.cached(http_request, request, cached, record, base_headers)
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
                return await self.respond.stream(
                    http_request, request, opened, record, base_headers, decision
                )
            served = await self.runner.complete(request, plan)
            record.attempts = served.attempts
            return await self.respond.whole(
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
            unavailable = outage_error(exc)
            if unavailable is not None:
                # Not a bug: a store is down. One line (repeats are rate-limited), a clean 503.
                log.warning("request failed, a store is unavailable: %s: %s", type(exc).__name__, exc)
                record.status = unavailable.status
                record.error = unavailable.message
                return error_response(unavailable, base_headers)
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
                return await self.respond.whole_as_stream(
                    http_request, request, served, record, headers, decision
                )
            completion, candidate = served.completion, served.candidate
            return await self.respond.whole(request, completion, candidate, record, headers, decision)
        last = plan.stage(len(plan.stages) - 1)
        try:
            if request.stream:
                opened = await self.runner.open_stream(request, last)
                opened.attempts[:0] = judged.attempts
                return await self.respond.stream(http_request, request, opened, record, headers, decision)
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
        completion, candidate = served.completion, served.candidate
        return await self.respond.whole(request, completion, candidate, record, headers, decision)

    # -- the cache ----------------------------------------------------------------------

    def _cache_decision(self, request: ChatRequest, headers: Any) -> CacheDecision:
        if self.cache is None:
            return CacheDecision("bypass", reason="no cache")
        return self.cache.decide(request, headers, lambda: self.planner.resolved_name(request))

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
