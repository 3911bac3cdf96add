"""The request path, top to bottom in one place: `ChatPipeline.handle` is the list of stages.

  1. authenticate       the API key (KeyStore.verify: a TTL cache in front of the store)
  2. read the request   body size and JSON depth, then the fields the gateway reads (server.parse)
  3. cache lookup       may the cache answer (not for non-deterministic requests), and does it?
     on a hit:          one request off the key's requests per minute (429 past it), respond,
                        record; nothing is planned, reserved or called
  4. plan               routing turns the request into an ordered plan of attempts
  5. rate limit and     one atomic step: the request and token rate limits and a reservation
     reserve budget     of the plan's worst-case cost (Admission.admit; skipped unmetered)
  6. call upstream      the attempt loop (retries, fallbacks, breakers): a whole answer, an
                        opened stream, or a cascade run
  7. respond            server.responses costs the answer and writes it out
  8. settle and record  the hold settled to the actual cost (or released); the record written

Each stage reads and writes one `Exchange` (server/exchange.py). The client's wire (OpenAI chat,
Anthropic Messages, Responses: server/client_wires.py) is met twice only, at the edges: it turns
the body into the internal chat request in stage 2 and writes the answer or error in stage 7;
every stage between sees the internal request alone.

Why this order, where it departs from "authenticate, rate limit, reserve, cache, plan": the
reservation holds the plan's worst case (its candidates' prices and output allowances, a cascade's
every step), so it can only follow the plan, and the rate limits are checked in the same atomic
write (the one synchronous store write on the hot path), so they come with it. The cache comes
first: a hit costs nothing and calls nothing, so it needs no plan and no reservation, and it still
takes its one request from the key's rate limit once it is known to be a hit. So a key without
credit is still served what the cache holds (free), and a key over its request rate is refused
after the lookup, not before it (with the semantic cache on, such a request still costs one
embedding). Settlement follows the response because a stream's cost is known only at its end; a
whole answer is costed before its body is built, and its hold settled before `handle` returns.

A stage that has nothing to wait for in the usual case is called as a plain function, and awaits
only when it must (a key the cache does not know, a body still arriving, an exact-cache read, a
hold to settle, an answer without usage to estimate): a coroutine per stage cost ~0.3 µs each
whether it waited or not (bench/README.md, "A reshaped hot path").

Invariants: every request that reaches `handle` is recorded exactly once, errors included; a hold
is always settled or released; no error leaves as a stack trace (a bug is a logged 500, a store
outage a 503). tests/test_pipeline.py checks the order and these in process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from faregate.accounts.admission import Admission, OpenAdmission
from faregate.accounts.keys import ApiKey, KeyStore
from faregate.cache.service import CachedAnswer, ResponseCache
from faregate.config import LimitsSettings
from faregate.errors import (
    UNKNOWN_API_KEY,
    AuthenticationFailed,
    ClientClosedRequest,
    FaregateError,
    InternalError,
    PayloadTooLarge,
)
from faregate.routing.attempts import AttemptRunner, CutOpening, Served, billed_cost
from faregate.routing.cascade_runner import CascadeRunner
from faregate.routing.opened_stream import OpenedStream
from faregate.routing.plan import Planner
from faregate.routing.worst_case import worst_case
from faregate.server.aiohttp_seam import AiohttpRequest
from faregate.server.client_wires import CHAT, ClientWire
from faregate.server.exchange import Exchange
from faregate.server.http_seam import HttpRequest, Reply, Whole
from faregate.server.parse import decode_json_object, parse_chat_request
from faregate.server.responses import Responder, error_reply
from faregate.store.outage import outage_error
from faregate.telemetry.records import RecordWriter
from faregate.types import JSON, Attempt, Price, RequestRecord
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import StreamedAnswer

if TYPE_CHECKING:
    from faregate.quality.verifier import CacheJob, Job, Verifier

log = logging.getLogger("faregate.pipeline")


class HasHeaders(Protocol):
    """What authentication reads: an aiohttp request or a seam one (server/http_seam.py)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


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
        self.respond = Responder(cache, runner.request_timeout_s)
        # Shadow verification of calibrated routes (quality/), set by the app when any route has one.
        self.verifier: Verifier | None = None
        # Called with every finished record (metrics, alerts); must be cheap and never raise.
        self.listeners: list[Callable[[RequestRecord], None]] = []

    def handler(self, wire: ClientWire) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp route handler for requests in `wire` (`handle` itself is the chat wire's)."""

        async def handle(http_request: web.Request) -> web.StreamResponse:
            return await self.handle(http_request, wire)

        return handle

    def seam_handler(self, wire: ClientWire) -> Callable[[HttpRequest], Awaitable[Reply]]:
        """The handler of requests in `wire` for any server of the seam (the lean one): `serve`
        itself, no coroutine around it."""
        return functools.partial(self.serve, wire=wire)

    async def handle(self, http_request: web.Request, wire: ClientWire = CHAT) -> web.StreamResponse:
        """The aiohttp route handler (server/aiohttp_seam.py)."""
        http = AiohttpRequest(http_request)
        return http.written(await self.serve(http, wire))

    async def serve(self, http: HttpRequest, wire: ClientWire = CHAT) -> Reply:
        exchange = Exchange.begin(http, self.baseline, wire)
        try:
            exchange.authenticated(self.known_key(http) or await self.authenticate(http))
            whole = http.body_if_whole()
            body = self.checked_body(whole) if whole is not None else await self.read_body(http)
            self.read_parsed(exchange, body)
            cached = await self.look_up(exchange) if self.looks_up(exchange) else None
            if cached is not None:
                exchange.found_in_cache()
                await self.count_hit(exchange)
                response = await self.respond.send(exchange, cached)
                await self.verify_hit_later(exchange, cached, response)
                return response
            request = exchange.request
            plan = self.planner.plan_now(request) or await self.planner.plan(request)
            exchange.planned(plan)
            if self.metered:
                await self.reserve(exchange)
            if plan.stages or request.stream:
                answer: Served | OpenedStream = await self.call_upstream(exchange)
            else:  # the usual call (`call_upstream`'s last line), without a coroutine around it
                answer = await self.runner.complete(request, plan)
            now = self.respond.whole_now(exchange, answer)
            response = now if now is not None else await self.respond.send(exchange, answer)
            if self.verifier is not None:
                await self.verify_later(exchange, answer, response)
            return response
        except FaregateError as error:
            exchange.failed(error)
            return error_reply(error, exchange.headers, wire)
        except Exception as exc:
            return self.unexpected(exchange, exc)
        finally:
            if exchange.hold is None and exchange.verification is None:
                self.record(exchange)  # nothing to settle: a wait only for the backpressure
                if self.records.backlogged:
                    await self.records.room()  # as `settle_and_record`
            else:
                await self.settle_and_record(exchange)

    # -- the stages, in order -----------------------------------------------------------------

    async def authenticate(self, http_request: HasHeaders) -> ApiKey:
        """The key in `Authorization: Bearer ...`, or in `x-api-key` as Anthropic's SDK and Claude
        Code send it (also the models and account endpoints' check)."""
        key = await self.keys.verify(_presented_key(http_request))
        if key is None:
            raise AuthenticationFailed(UNKNOWN_API_KEY)
        return key

    def known_key(self, http_request: HasHeaders) -> ApiKey | None:
        """`authenticate` when the key cache knows the key (no wait); None: ask `authenticate`."""
        return self.keys.known(_presented_key(http_request))

    def read_parsed(self, exchange: Exchange, body: JSON) -> None:
        """The parse stage of a body read and checked (`read_body`)."""
        exchange.asked_for(body)
        chat = exchange.wire.to_chat(body)
        request = parse_chat_request(chat, exchange.http.headers, exchange.record.request_id, self.limits)
        exchange.read(request)

    def looks_up(self, exchange: Exchange) -> bool:
        """The cache's decision; True when it is to be looked up (`look_up`)."""
        if self.cache is None:
            exchange.decided(None)
            return False
        request = exchange.request
        decision = self.cache.decide(
            request,
            exchange.http.headers,
            lambda: self.planner.resolved_name(request),
            by_stream=self.planner.picks_by_stream,
            definition=self.planner.route_definition,
        )
        exchange.decided(decision)
        return decision.status == "lookup" and decision.read

    async def look_up(self, exchange: Exchange) -> CachedAnswer | None:
        """Looked up as `looks_up` decided (it has run)."""
        decision = exchange.cache
        if self.cache is None or decision is None:
            return None
        request = exchange.request
        cached = await self.cache.lookup(decision, request)
        if cached is not None:
            # Named as a miss names it: one route is one row on the dashboard.
            exchange.routed(self.planner.requested_route(request))
            # What its call was sent without or instead, said as on the answer it was (a model
            # with nothing to leave out or fit, most of them, costs the lookup).
            model = self.planner.catalog.get(cached.model)
            if model is not None and (model.refuses or model.efforts is not None or request.wire_extras):
                offer = model.offer_of(cached.provider)
                if offer is not None:
                    exchange.cached_from(model, offer)
        return cached

    async def count_hit(self, exchange: Exchange) -> None:
        """Free, but still a request: it counts against the key's requests per minute."""
        assert exchange.key is not None
        exchange.admitted(await self.admission.count_hit(exchange.key, exchange.request))

    async def reserve(self, exchange: Exchange) -> None:
        if not self.metered:
            return
        assert exchange.key is not None and exchange.plan is not None
        worst, tokens_held = await worst_case(exchange.plan, exchange.request)
        hold = await self.admission.admit(exchange.key, exchange.request, worst, tokens_held)
        exchange.admitted(hold.headers, hold)

    async def call_upstream(self, exchange: Exchange) -> Served | OpenedStream:
        """One call per mode: a cascade, a stream, a whole answer. Every attempt is in the answer
        (or in the error raised)."""
        request, plan = exchange.request, exchange.plan
        assert plan is not None
        if plan.stages:
            cascaded = await self.cascades.run(request, plan)
            exchange.cascaded(cascaded.judged)
            return cascaded.answer
        if request.stream:
            return await self.open_stream(exchange)
        return await self.runner.complete(request, plan)

    async def open_stream(self, exchange: Exchange) -> OpenedStream:
        """The stream, held back until its first content (a reasoning model may think for
        minutes first), unless the client goes away meanwhile: then the upstream call is ended
        at once, not when its first content comes, and billed for what it had read (the prompt,
        the reasoning); a 499. (Only the lean server says when a client goes.)"""
        request, plan = exchange.request, exchange.plan
        assert plan is not None
        gone = exchange.http.gone()
        if gone is None:
            return await self.runner.open_stream(request, plan)
        # The handler's own task is cancelled, not a task made per stream: no task to make, and
        # every stage of a request stays in its handler's task (bench/gateway_probe.py's marks).
        task = asyncio.current_task()
        assert task is not None
        cut = CutOpening()
        opening, left = True, False

        def leave(_: object) -> None:
            nonlocal left
            if opening:  # else it opened first (the callback was already on its way)
                left = True
                task.cancel()

        gone.add_done_callback(leave)
        caught = False
        try:
            return await self.runner.open_stream(request, plan, cut)
        except asyncio.CancelledError:
            if not left:
                raise
            caught = True
            if task.uncancel() > 0:
                raise  # cancelled from outside too (a shutdown past its grace)
        finally:
            opening = False
            gone.remove_done_callback(leave)
            if left and not caught:
                task.uncancel()  # not left pending on the task, should a call below swallow it
        await self._bill_cut(exchange, cut)
        raise ClientClosedRequest("The client closed the connection before its stream started.")

    async def _bill_cut(self, exchange: Exchange, cut: CutOpening) -> None:
        """A cut opening's calls into the record: the one in flight billed for its prompt and
        what it had read (an estimate: the upstream sends its usage only at the end)."""
        attempts = cut.attempts
        candidate = cut.in_flight
        if candidate is not None:
            seen = StreamedAnswer()
            for chunk in cut.read:
                seen.take(chunk)
            text = "".join(seen.text) + "".join(seen.reasoning)
            deltas = sum(1 for piece in seen.text if piece) + sum(1 for piece in seen.reasoning if piece)
            usage = await estimate_usage(exchange.request, text, deltas)
            attempt = Attempt(
                candidate.model.name,
                candidate.offer.provider,
                "client_gone",
                (time.perf_counter() - exchange.request.started) * 1000,
                detail="the client closed the connection before the stream's first content",
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost=candidate.offer.price.cost(usage),
            )
            attempts.append(attempt)
        record = exchange.record
        record.attempts = attempts
        record.cost_usd = billed_cost(attempts)
        record.prompt_tokens = sum(a.prompt_tokens for a in attempts)
        record.completion_tokens = sum(a.completion_tokens for a in attempts)
        record.usage_estimated = candidate is not None

    async def settle_and_record(self, exchange: Exchange) -> None:
        job = exchange.verification  # set only with a verifier, which promised it (_promise)
        verifier = self.verifier if job is not None else None
        try:
            exchange.finished()
            try:
                if exchange.hold is not None:
                    await self._close_hold(exchange)
            finally:
                # Recorded even when cancelled while settling (a shutdown past its grace cancels
                # the requests still running): no request goes unrecorded.
                record = exchange.record
                self.records.submit(record)
            if verifier is not None and job is not None and record.status == 200:
                # After the response and its record: a verification never delays or fails either.
                verifier.submit(job)
        finally:
            if verifier is not None:
                verifier.let_go()  # after submit: `pending` never dips to 0 in between
        self._tell_listeners(record)
        if self.records.backlogged:
            # Backpressure: the store writes fewer records a second than come in; this request's
            # handler returns once it has room, so the clients slow down instead of the buffer
            # growing with the rate (telemetry/records.py).
            await self.records.room()

    def record(self, exchange: Exchange) -> None:
        """`settle_and_record` of a request without a hold or a verification, but for the
        backpressure: the caller awaits `records.room()` when `records.backlogged`."""
        exchange.finished()
        record = exchange.record
        self.records.submit(record)
        self._tell_listeners(record)

    def _tell_listeners(self, record: RequestRecord) -> None:
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                # Metrics must never cost a client its answer.
                log.exception("a record listener failed")

    async def verify_later(self, exchange: Exchange, answer: Served | OpenedStream, response: Reply) -> None:
        """A calibrated decision drawn for verification: finish writing the response now (a whole
        answer is otherwise written after `handle` returns), so that the verification, started at
        the end of `settle_and_record`, begins only once the client has its answer."""
        if self.verifier is None or exchange.plan is None or exchange.plan.trace.quality is None:
            return
        job = self.verifier.job_for(exchange.plan, exchange.request, answer, exchange.record.status)
        if job is not None:
            await self._promise(exchange, job, response)

    async def verify_hit_later(self, exchange: Exchange, cached: CachedAnswer, response: Reply) -> None:
        """A semantic hit drawn for verification (a calibrated acceptance): as `verify_later`."""
        if self.verifier is None:
            return
        job = self.verifier.cache_job_for(exchange.request, cached)
        if job is not None:
            await self._promise(exchange, job, response)

    async def _promise(self, exchange: Exchange, job: Job | CacheJob, response: Reply) -> None:
        """Count the verification as pending before the client can have its answer, then finish
        writing the answer; settle_and_record submits the job (or lets it go)."""
        assert self.verifier is not None
        self.verifier.promise()
        written = False
        try:
            written = await self._written(exchange, response)
        finally:
            # Let go also when cancelled mid-write (a client gone, a shutdown past its grace):
            # a promise nobody submits would count as pending for good.
            if written:
                exchange.verification = job
            else:
                self.verifier.let_go()

    async def _written(self, exchange: Exchange, response: Reply) -> bool:
        """Finish writing the response now; False if the client is gone."""
        if not isinstance(response, Whole):
            return True  # a stream, written as it went
        try:
            await exchange.http.send(response)
        except (ConnectionResetError, ConnectionError):
            exchange.client_gone("before the answer was written")
            return False
        return True

    # -- helpers ------------------------------------------------------------------------------

    def unexpected(self, exchange: Exchange, exc: Exception) -> Whole:
        """Not a FaregateError: a store outage (a clean 503, logged once per interval) or a bug of
        ours (a clean 500 without internals; the log gets the trace)."""
        unavailable = outage_error(exc)
        if unavailable is not None:
            log.warning("request failed, a store is unavailable: %s: %s", type(exc).__name__, exc)
            exchange.failed(unavailable)
            return error_reply(unavailable, exchange.headers, exchange.wire)
        log.exception("unhandled error in request %s", exchange.record.request_id)
        error = InternalError("The gateway hit an internal error; it has been logged.")
        exchange.failed(error, note=f"internal error: {type(exc).__name__}")
        return error_reply(error, exchange.headers, exchange.wire)

    async def read_body(self, http_request: HttpRequest) -> JSON:
        """The body as a JSON object, within the size and depth limits (every wire's first check)."""
        length = http_request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body is {length} bytes; the limit is {self.max_body_bytes} bytes."
            )
        try:
            raw = await http_request.read()
        except ConnectionResetError as gone:  # both servers say so when the client leaves mid-body
            raise ClientClosedRequest("The client closed the connection before its body was read.") from gone
        return self.checked_body(raw)

    def checked_body(self, raw: bytes) -> JSON:
        """`read_body`'s checks of a body already read."""
        if len(raw) > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body is {len(raw)} bytes; the limit is {self.max_body_bytes} bytes."
            )
        return decode_json_object(raw, self.limits.max_json_depth)

    async def _close_hold(self, exchange: Exchange) -> None:
        """Settle what was spent (even on a failed request: billed failed attempts), else release."""
        assert exchange.hold is not None
        cost, tokens = exchange.spent
        try:
            if cost > 0 or tokens:
                await self.admission.settle(exchange.hold, cost, tokens)
            else:
                await self.admission.release(exchange.hold)
        except Exception:
            # Never lose the record over this. A store outage does not come here (the admission
            # keeps the settlement and retries it); this is a bug: the hold expires, audited.
            log.exception("could not settle the reservation of request %s", exchange.record.request_id)


def _presented_key(http_request: HasHeaders) -> str:
    """The raw key of `Authorization: Bearer ...` or `x-api-key`; a 401 when there is none."""
    header = http_request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raw = http_request.headers.get("x-api-key", "")
        if not raw.strip():
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer fg-...' "
                "(or in an 'x-api-key' header).",
                code="missing_api_key",
            )
    return raw.strip()
