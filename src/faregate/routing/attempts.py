"""The attempt loop: call the plan's candidates in order until one gives a real answer.

Per candidate: up to 1 + retries calls, with exponential backoff and full jitter,
waiting out a short Retry-After; then fall back to the next candidate. A failure
moves on when it is the provider's fault (429, 5xx, 409/425/499, timeout, connection error, a 200
with nothing in it, a stream that dies before its first content); an answer cut at the client's
max_tokens is served however blank (a reasoning model may spend them all on its reasoning):
another call would reach the same limit, and be billed for it too; a 404 or a refused key
(401, 403) moves on without a retry, since the same call gets the same answer. A 4xx that is the
client's fault is returned at once: another provider would refuse it too; but a prompt an upstream
finds too long for its model's window (the plan's fit was the gateway's count), or one a provider's
wire cannot say (the Messages wire n > 1, logprobs, penalties: refused before anything is sent),
moves on to the next model without a retry, and is the client's 400 only when every model called
said so. Breakers
fail fast: an offer whose breaker is open is not called at all. An offer whose upstream said it has
no room for longer than the gateway waits (a 429, 503 or 529 with a long Retry-After) cools down
(routing.health): until then it is called after every other candidate, only if none of them served.
A candidate's provider and the timeouts of its calls are one registry lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain, pairwise
from typing import TypeVar, cast

from faregate.config import RoutingSettings
from faregate.errors import (
    BreakersOpen,
    RateLimited,
    UpstreamFailed,
    UpstreamFailure,
    UpstreamRejected,
)
from faregate.providers.base import EmbeddingProvider, Provider, UpstreamCall, aclose_quietly, stream_reads
from faregate.providers.registry import ProviderEntry, ProviderRegistry
from faregate.providers.upstream_failures import overflows_context
from faregate.routing.health import HealthBoard, told_to_wait
from faregate.routing.opened_stream import NOT_HEALTH_SIGNALS, OpenedStream, billed_before_content
from faregate.routing.plan import Candidate, Plan
from faregate.routing.queue import UpstreamLimiter, tier_of
from faregate.types import GATEWAY_FIELDS, JSON, Attempt, ChatRequest, Completion, RequestMeta, Usage
from faregate.wire.model_params import drop_refused, fit_effort
from faregate.wire.openai import (
    TOOL_FINISHES,
    answer_is_empty,
    chunk_has_content,
    cut_at_limit,
    finish_reason,
    upstream_body,
    without_fields,
)

T = TypeVar("T")

# After a finish reason the usage chunk and the end follow at once; bounded for upstreams that linger.
_AFTER_FINISH_S = 0.5


@dataclass(slots=True)
class Served:
    completion: Completion
    candidate: Candidate
    attempts: list[Attempt]


class AttemptRunner:
    def __init__(
        self,
        providers: ProviderRegistry,
        request_timeout_s: float,
        routing: RoutingSettings | None = None,
        health: HealthBoard | None = None,
        limiter: UpstreamLimiter | None = None,
    ) -> None:
        self.providers = providers
        self.request_timeout_s = request_timeout_s
        self.routing = routing or RoutingSettings()
        self.health = health or HealthBoard(self.routing.breaker, self.routing.latency_window)
        # Concurrency bounds per provider (premium first in the queue, verifications in slots of
        # their own); none unless configured.
        self.limiter = limiter or UpstreamLimiter()
        self._random = random.Random()
        # Counters for metrics: retries made and fallbacks taken for users' requests, and for the
        # quality loop's shadow and judge calls apart (an operator reads the first about user
        # traffic; the second is the only trace of a verification's upstream trouble, as its
        # calls have no request record).
        self.retries = 0
        self.fallbacks = 0
        self.verification_retries = 0
        self.verification_fallbacks = 0

    def build_call(
        self, request: ChatRequest, candidate: Candidate, entry: ProviderEntry, time_left: float
    ) -> UpstreamCall:
        body = upstream_body(
            request.body,
            candidate.offer.upstream_model,
            candidate.model.max_output_tokens,
            request.stream,
            entry.output_limit_field,
        )
        refused = candidate.model.refuses
        if refused:
            # What this model refuses (a 400 no fallback follows) is left out: the client's
            # settings were for whichever model the route picks (wire/model_params.py).
            drop_refused(body, refused)
        efforts = candidate.model.efforts
        if efforts is not None and candidate.offer.fits_efforts:
            # An effort it does not take (a 400 too) is sent as the nearest it does.
            fit_effort(body, efforts)
        if request.wire_extras:
            body = without_fields(body, request.wire_extras - entry.provider.carries)
        model = candidate.model
        # The model's own timeouts (a reasoning model's, longer) over its provider's; None for most.
        first_byte_s = model.first_byte_timeout_s or entry.first_byte_timeout_s
        idle_s = (model.stream_idle_timeout_s or entry.stream_idle_timeout_s) if request.stream else None
        # Positional, in the order of UpstreamCall's fields (made for every attempt: keywords
        # would cost a dict of them per call).
        return UpstreamCall(
            candidate.offer,
            body,
            request.stream,
            min(first_byte_s, time_left),  # first_byte_timeout_s
            min(entry.total_timeout_s, time_left),  # total_timeout_s
            model.max_output_tokens,
            idle_s,  # stream_idle_timeout_s
        )

    def _time_left(self, request: RequestMeta) -> float:
        return self.request_timeout_s - (time.perf_counter() - request.started)

    def _pause_before_retry(self, failure: UpstreamFailure, tries: int, time_left: float) -> float | None:
        """Seconds to wait before calling the same offer again, or None to move on."""
        if failure.kind in ("timeout", "rejected"):
            return None  # a hang rarely fixes itself; fall back instead of paying the timeout twice
        if failure.status == 404:
            return None  # the provider does not serve the model: asked again, it says so again
        if failure.status in (400, 401, 402, 403, 413) or (
            failure.status == 429 and failure.kind != "rate_limited"
        ):
            # The provider refused our key (or, OpenRouter's 403, its moderation flagged the input),
            # or our account with it is out of credit, or the request is more than the account's
            # rate limit (a 400 that is not "rejected" is only Gemini's
            # refused key or Anthropic's "credit balance is too low"; a 413 not "rejected" only a
            # request over the account's tokens per minute; a 429 that is no rate limit only that,
            # or OpenAI's insufficient_quota): asked again it says so again.
            return None
        if failure.retry_after is not None:
            if failure.retry_after > self.routing.max_retry_after_s:
                return None
            wait = failure.retry_after
        else:
            ceiling = min(self.routing.backoff_max_s, self.routing.backoff_base_s * (2**tries))
            wait = self._random.uniform(0, ceiling)
        return wait if wait < time_left - 0.05 else None

    async def complete(self, request: ChatRequest, plan: Plan) -> Served:
        async def once(
            candidate: Candidate, provider: Provider, call: UpstreamCall, time_left: float
        ) -> Completion:
            t0 = time.perf_counter()
            if candidate.offer.provider in self.limiter.gates:
                completion = await self._in_slot(request, candidate, time_left, provider.complete, call)
            else:
                # The hot path: the call's own timeouts already end at the request's deadline.
                completion = await provider.complete(call)
            if answer_is_empty(completion.body) and not cut_at_limit(finish_reason(completion.body)):
                failure = UpstreamFailure("empty", "200 with no choices or blank content", status=200)
                failure.usage = completion.usage  # the provider billed it all the same
                raise failure
            self.health.success(
                candidate.offer.key, (time.perf_counter() - t0) * 1000, api_key=request.key_id
            )
            return completion

        completion, candidate, attempts, _ = await self._first_success(
            request, plan, once, lambda c, e, t: self.build_call(request, c, e, t)
        )
        return Served(completion, candidate, attempts)

    async def embed(self, request: RequestMeta, body: JSON, inputs: int, plan: Plan) -> Served:
        """An embeddings call, with the retries, fallbacks and breakers of `complete`: the body is
        sent as the client wrote it (the offer's upstream model name put in, the gateway's own
        fields taken out), and an answer without one vector per input (`inputs`) is a failed
        call to fall back from, billed if the provider reported usage."""

        async def once(
            candidate: Candidate, provider: Provider, call: UpstreamCall, time_left: float
        ) -> Completion:
            t0 = time.perf_counter()
            embedder = cast(EmbeddingProvider, provider)
            if candidate.offer.provider in self.limiter.gates:
                completion = await self._in_slot(request, candidate, time_left, embedder.embed, call)
            else:
                completion = await embedder.embed(call)
            data = completion.body.get("data")
            got = len(data) if isinstance(data, list) else 0
            if got != inputs:
                failure = UpstreamFailure(
                    "empty", f"200 with {got} embeddings for {inputs} inputs", status=200
                )
                failure.usage = completion.usage
                raise failure
            self.health.success(
                candidate.offer.key, (time.perf_counter() - t0) * 1000, api_key=request.key_id
            )
            return completion

        def build(candidate: Candidate, entry: ProviderEntry, time_left: float) -> UpstreamCall:
            sent = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
            sent["model"] = candidate.offer.upstream_model
            return UpstreamCall(
                offer=candidate.offer,
                body=sent,
                stream=False,
                first_byte_timeout_s=min(
                    candidate.model.first_byte_timeout_s or entry.first_byte_timeout_s, time_left
                ),
                total_timeout_s=min(entry.total_timeout_s, time_left),
            )

        completion, candidate, attempts, _ = await self._first_success(request, plan, once, build)
        return Served(completion, candidate, attempts)

    async def _in_slot(
        self,
        request: RequestMeta,
        candidate: Candidate,
        time_left: float,
        send: Callable[[UpstreamCall], Awaitable[Completion]],
        call: UpstreamCall,
    ) -> Completion:
        """`send(call)` holding one of the candidate's provider's upstream slots. The wait for the
        slot is the queue's own, bounded by `time_left`: the request's deadline reached there is
        its RateLimited refusal (the upstream was never called, so no failure of the offer),
        not a TimeoutError that the attempt loop counts against the offer's breaker. The call
        then gets what is left of the request's time."""
        async with self.limiter.slot(candidate.offer.provider, tier_of(request), time_left):
            async with asyncio.timeout(self._time_left(request)):
                return await send(call)

    async def open_stream(
        self, request: ChatRequest, plan: Plan, cut: CutOpening | None = None
    ) -> OpenedStream:
        """Open streams in plan order until one yields real content. Nothing has reached the
        client yet, so a failure here still falls back invisibly. Cancelled (its client gone),
        it leaves in `cut` every call made and what the one in flight had read, to be billed."""

        async def once(
            candidate: Candidate, provider: Provider, call: UpstreamCall, time_left: float
        ) -> tuple[list[JSON], list[JSON], AsyncIterator[list[JSON]]]:
            slot = await self.limiter.acquire(candidate.offer.provider, tier_of(request), time_left)
            if candidate.offer.provider in self.limiter.gates:
                # The wait for the slot came out of the request's time: the stream's opening and
                # its call's own timeouts get what is left after it, as `_in_slot` gives a whole call.
                time_left = self._time_left(request)
                call = _within(call, time_left)
            # The stream holds its slot until it ends or is closed (every path below closes it).
            iterator = self.limiter.guard(stream_reads(provider, call), slot)
            buffered: list[JSON] = []
            try:
                async with asyncio.timeout(time_left):
                    while True:
                        try:
                            read = await anext(iterator)
                        except StopAsyncIteration:
                            raise _early_end(buffered) from None
                        for index, chunk in enumerate(read):
                            buffered.append(chunk)
                            if chunk_has_content(chunk):
                                # The rest of the read the first content came in is kept apart:
                                # the relay writes the first content before it.
                                return buffered, read[index + 1 :], iterator
                            reason = finish_reason(chunk)
                            if cut_at_limit(reason):
                                # Cut at max_tokens before any text (all of it reasoning): the
                                # client's limit, served as it is (`cut_at_limit`).
                                return buffered, read[index + 1 :], iterator
                            if reason and reason not in TOOL_FINISHES:
                                # The usage comes after the finish (include_usage): read it, the
                                # provider billed this call all the same.
                                buffered.extend(read[index + 1 :])
                                await _read_after_finish(iterator, buffered)
                                raise UpstreamFailure("empty", "stream finished without any content")
            except UpstreamFailure as failure:
                await aclose_quietly(iterator)
                # Its usage, or an estimate of the reasoning it carried (billed upstream all the same).
                failure.usage = await billed_before_content(request, buffered)
                raise
            except TimeoutError:
                # The request's deadline, while a reasoning model may still be thinking: likewise.
                await aclose_quietly(iterator)
                raise DeadlineReached(await billed_before_content(request, buffered)) from None
            except BaseException:
                await aclose_quietly(iterator)
                if cut is not None:
                    cut.in_flight, cut.read = candidate, buffered
                raise

        (buffered, rest_of_read, iterator), candidate, attempts, t0 = await self._first_success(
            request,
            plan,
            once,
            lambda c, e, t: self.build_call(request, c, e, t),
            cut.attempts if cut is not None else None,
        )
        # The offer answers: a breaker this stream probed closes now, not when the stream ends.
        self.health.answering(candidate.offer.key, request.key_id)
        return OpenedStream(
            candidate,
            [buffered, rest_of_read],
            iterator,
            attempts,
            t0,
            self.health,
            request.key_id,
            self.routing.max_retry_after_s,
        )

    async def _first_success(
        self,
        request: RequestMeta,
        plan: Plan,
        once: Callable[[Candidate, Provider, UpstreamCall, float], Awaitable[T]],
        build: Callable[[Candidate, ProviderEntry, float], UpstreamCall],
        attempts: list[Attempt] | None = None,
    ) -> tuple[T, Candidate, list[Attempt], float]:
        """Call `once` for each candidate in plan order, with its retries, until one succeeds
        (`build` makes each call, given the candidate, its provider and the time left).
        Returns its result, the candidate, every attempt made (into `attempts`, if given), and
        when the served one started."""
        attempts = [] if attempts is None else attempts
        try:
            return await self._through_candidates(request, plan, once, build, attempts)
        finally:
            # Counted from the calls made, as a record's fallback and retry flags are: a candidate
            # passed over without a call (its breaker open, its provider's queue full) is no
            # fallback, nor a retry its breaker refused, or left undone at the deadline.
            if len(attempts) > 1:  # the usual request: one call, neither
                fallbacks, retries = _moves(attempts)
                if request.verification:
                    self.verification_fallbacks += fallbacks
                    self.verification_retries += retries
                else:
                    self.fallbacks += fallbacks
                    self.retries += retries

    async def _through_candidates(
        self,
        request: RequestMeta,
        plan: Plan,
        once: Callable[[Candidate, Provider, UpstreamCall, float], Awaitable[T]],
        build: Callable[[Candidate, ProviderEntry, float], UpstreamCall],
        attempts: list[Attempt],
    ) -> tuple[T, Candidate, list[Attempt], float]:
        """`_first_success`'s loop; every call made is added to `attempts`."""
        timed_out = False
        queue_full: RateLimited | None = None
        breaker_refused: list[str] = []  # offers whose breaker refused their first call
        breaker_wait = math.inf  # the soonest one of those lets a call through again (seconds)
        # A 400 another model may not give: an upstream's "the prompt overflows my window", or a
        # wire that cannot say the request (nothing sent). The client's only if every call says so.
        passed_on: UpstreamRejected | None = None
        # Candidates whose offer cools down (its upstream said when it will have room): passed
        # over, and called after the others only if none of them served (the wait is the
        # upstream's estimate, and a smaller request may fit its limit: never a refusal of ours).
        cooled: list[Candidate] = []
        planned = len(plan.candidates)
        for index, candidate in enumerate(chain(plan.candidates, cooled)):
            key = candidate.offer.key
            if (
                self.health.cooling  # the usual case: nothing cools, nothing more is looked up
                and index < planned
                and self.health.cools(key, request.key_id, time.monotonic())
            ):
                cooled.append(candidate)
                continue
            entry = self.providers.entry(candidate.offer.provider)
            for tries in range(candidate.retries + 1):
                time_left = self._time_left(request)
                if time_left <= 0:
                    timed_out = True
                    break
                now = time.monotonic()
                if not self.health.allow(key, request.key_id, now):
                    if not tries:
                        breaker_refused.append(f"{candidate.offer.provider}/{candidate.model.name}")
                        breaker_wait = min(breaker_wait, self.health.reopens_in(key, now, request.key_id))
                    break
                call = build(candidate, entry, time_left)
                t0 = time.perf_counter()
                try:
                    result = await once(candidate, entry.provider, call, time_left)
                except UpstreamFailure as failure:
                    attempts.append(self._failed(candidate, t0, failure, failure.usage, request.key_id))
                    wait = self._pause_before_retry(failure, tries, self._time_left(request))
                    if wait is None or tries == candidate.retries:
                        break
                    await asyncio.sleep(wait)
                    continue
                except TimeoutError as deadline:
                    attempts.append(
                        self._failed(
                            candidate,
                            t0,
                            UpstreamFailure("timeout", "request deadline reached"),
                            deadline.usage if isinstance(deadline, DeadlineReached) else None,
                            request.key_id,
                        )
                    )
                    timed_out = True
                    break
                except RateLimited as refused:
                    # The provider's queue is full (routing/queue.py; nothing was sent): like an
                    # open breaker, this offer cannot be called now, and the next candidate may.
                    self.health.release_probe(key, request.key_id)
                    queue_full = refused
                    break
                except UpstreamRejected as rejected:
                    self.health.release_probe(key, request.key_id)
                    attempts.append(
                        _attempt(candidate, t0, "rejected", str(rejected.message), rejected.status)
                    )
                    if index < planned + len(cooled) - 1 and (
                        rejected.untranslatable or overflows_context(rejected)
                    ):
                        # The plan fitted the prompt by the gateway's count, an estimate (and each
                        # upstream counts with its own tokenizer): a later model, with a larger
                        # window, may serve it; and a later provider's wire may say what this
                        # one's cannot. No retry, and no failure of the offer's.
                        passed_on = rejected
                        break
                    rejected.attempts = attempts
                    raise
                except BaseException:
                    self.health.release_probe(key, request.key_id)
                    raise
                attempts.append(_attempt(candidate, t0, "ok"))
                return result, candidate, attempts, t0
            if timed_out:
                break
        if queue_full is not None and not attempts:
            raise queue_full  # no upstream was called: the queue's 429, with its Retry-After
        if breaker_refused and not attempts and not timed_out:
            # No upstream was called: not "All 0 attempts failed".
            raise BreakersOpen(breaker_refused, breaker_wait)
        if passed_on is not None and all(a.outcome == "rejected" for a in attempts):
            passed_on.attempts = attempts  # every upstream called refused the request: their 400
            raise passed_on
        raise UpstreamFailed(attempts, timeout=timed_out or _all_timeouts(attempts))

    def _failed(
        self,
        candidate: Candidate,
        t0: float,
        failure: UpstreamFailure,
        usage: Usage | None = None,
        api_key: str | None = None,
    ) -> Attempt:
        if failure.kind in NOT_HEALTH_SIGNALS or failure.content_flagged:
            # No verdict on the offer: a half-open breaker's probe is free for the next call.
            self.health.release_probe(candidate.offer.key, api_key)
        else:
            self.health.failure(candidate.offer.key, api_key)
        if told_to_wait(failure, self.routing.max_retry_after_s):
            # Not waited out here, and the next requests need not ask again to learn it.
            self.health.cool(candidate.offer.key, api_key, cast(float, failure.retry_after))
        attempt = _attempt(candidate, t0, failure.kind, failure.detail, failure.status)
        attempt.retry_after = failure.retry_after
        if usage is not None:
            # The provider billed this failed call (a blank 200 still has a prompt): so do we.
            attempt.prompt_tokens = usage.prompt_tokens
            attempt.completion_tokens = usage.completion_tokens
            attempt.cost = candidate.offer.price.cost(usage)
        return attempt


async def _read_after_finish(iterator: AsyncIterator[list[JSON]], buffered: list[JSON]) -> None:
    """Add what follows a finish reason to `buffered` (the usage chunk, then the end), for at most
    `_AFTER_FINISH_S`: an upstream that lingers after its finish costs no more than that."""
    try:
        async with asyncio.timeout(_AFTER_FINISH_S):
            while True:
                buffered.extend(await anext(iterator))
    except (StopAsyncIteration, TimeoutError, UpstreamFailure):
        pass  # whatever usage came is in `buffered`; the attempt fails as empty either way


class DeadlineReached(TimeoutError):
    """The request's deadline reached during a call, with what the call was billed by then (a
    stream's reasoning read before its first content), if anything."""

    def __init__(self, usage: Usage | None) -> None:
        super().__init__("request deadline reached")
        self.usage = usage


def _within(call: UpstreamCall, time_left: float) -> UpstreamCall:
    """`call` with its timeouts cut to `time_left` (what is left of the request's time)."""
    return dataclasses.replace(
        call,
        first_byte_timeout_s=min(call.first_byte_timeout_s, time_left),
        total_timeout_s=min(call.total_timeout_s, time_left),
    )


def _early_end(buffered: list[JSON]) -> UpstreamFailure:
    if buffered:
        return UpstreamFailure("truncated", f"stream ended after {len(buffered)} chunk(s) without content")
    return UpstreamFailure("empty", "stream ended without any chunk")


@dataclass(slots=True)
class CutOpening:
    """A stream's opening cancelled because its client went away (`open_stream`): the calls made,
    and the candidate whose call was in flight with the chunks it had read (its reasoning, say),
    which its provider bills though no client reads them."""

    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    in_flight: Candidate | None = None
    read: list[JSON] = dataclasses.field(default_factory=list)


def _attempt(
    candidate: Candidate, t0: float, outcome: str, detail: str = "", status: int | None = None
) -> Attempt:
    # Positional, in the order of Attempt's fields: keywords would cost a dict per call.
    latency_ms = (time.perf_counter() - t0) * 1000
    attempt = Attempt(candidate.model.name, candidate.offer.provider, outcome, latency_ms, detail, status)
    if candidate.offer.at_peak:
        attempt.at_peak = True
    return attempt


def _moves(attempts: list[Attempt]) -> tuple[int, int]:
    """(fallbacks, retries) among a request's calls: a failed call followed by one on another
    offer, or on the same offer."""
    moved = sum((a.provider, a.model) != (b.provider, b.model) for a, b in pairwise(attempts))
    return moved, len(attempts) - 1 - moved


def _all_timeouts(attempts: list[Attempt]) -> bool:
    return bool(attempts) and all(a.outcome == "timeout" for a in attempts)


def served_cost(candidate: Candidate, usage: Usage, attempts: list[Attempt]) -> Decimal:
    """The request's cost: the served attempt's usage at its offer's price, plus what the other
    attempts were billed. The served attempt (the one "ok": a cascade's refused answers and
    judge calls have their own outcomes) is given that usage and cost, so the record shows what
    each upstream call cost, the one that answered too; `billed_cost` leaves it out of its sum."""
    cost = candidate.offer.price.cost(usage)
    for attempt in reversed(attempts):
        if attempt.outcome == "ok":
            attempt.prompt_tokens = usage.prompt_tokens
            attempt.completion_tokens = usage.completion_tokens
            attempt.cost = cost
            break
    return cost + billed_cost(attempts)


def billed_cost(attempts: list[Attempt]) -> Decimal:
    """What the attempts that did not serve cost (the served attempt's cost is `served_cost`'s)."""
    if len(attempts) == 1 and attempts[0].outcome == "ok":
        return _NOTHING  # the usual request: one attempt, served (no generator, no new Decimal)
    return sum((a.cost for a in attempts if a.outcome != "ok"), _NOTHING)


def billed_tokens(attempts: list[Attempt]) -> int:
    """The tokens the attempts that did not serve were billed (`billed_cost`'s tokens)."""
    return sum(a.prompt_tokens + a.completion_tokens for a in attempts if a.outcome != "ok")


_NOTHING = Decimal(0)
