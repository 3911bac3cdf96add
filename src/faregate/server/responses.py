"""How an answer leaves the gateway: `Responder.send(exchange, answer)`.

Three kinds of answer, each written the way the client asked for it:
- `Served` (a whole upstream answer): a JSON body, or for a streaming request (a cascade step
  judged before it could be sent) the same answer replayed as a stream;
- `OpenedStream`: relayed as it is read, then the usage chunk with the cost and `[DONE]`. The
  attempt loop held the stream back until its first real content, so everything here happens
  after the client has seen text: from then on a failure cannot be hidden, and the stream ends
  with an OpenAI-style error event (which the SDKs raise), never with a clean `[DONE]`;
- `CachedAnswer`: free; a JSON body or a replayed stream.

Each is costed (the provider's usage, estimated when it gave none, at the served offer's price,
plus what failed attempts were billed) and written into the exchange on the way out; the cache
learns from the whole text answers it may keep.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

from aiohttp import web

from faregate.cache.service import CachedAnswer, ResponseCache
from faregate.errors import FaregateError, UpstreamFailure
from faregate.routing.attempts import Served, served_cost
from faregate.routing.opened_stream import OpenedStream, carried_usage
from faregate.routing.plan import Candidate
from faregate.server.aiohttp_seam import web_response
from faregate.server.client_wires import CHAT, ClientWire, StreamEncoder
from faregate.server.exchange import Exchange
from faregate.server.http_seam import EventStream, HttpRequest, Reply, Whole
from faregate.types import JSON, Usage
from faregate.usage_estimate import estimate_usage
from faregate.wire.openai import (
    answer_as_chunks,
    answer_is_empty,
    billed_text,
    ended_unfinished,
    free_answer,
    price_answer,
    usage_chunk,
)

# A stream still being written this long past the request's deadline is cut (`_ReadDeadline`):
# the upstream's own timeouts end at the deadline, and this leaves the time to write the stream's
# end (its usage chunk, or the error event) to a client that reads.
END_GRACE_S = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
Answer = Served | OpenedStream | CachedAnswer


def error_reply(
    error: FaregateError, headers: dict[str, str] | None = None, wire: ClientWire = CHAT
) -> Whole:
    """An error in the client's wire (OpenAI's shape unless it came in on another)."""
    return Whole(wire.status(error), wire.error(error), {**error.headers, **(headers or {})})


def error_response(
    error: FaregateError, headers: dict[str, str] | None = None, wire: ClientWire = CHAT
) -> web.Response:
    """`error_reply` for an aiohttp route."""
    return web_response(error_reply(error, headers, wire))


class _Gone:
    """The reply to a client gone before its stream opened: nothing more is written."""

    async def write(self, data: bytes) -> None:
        raise ConnectionResetError("the client is gone")

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise ConnectionResetError("the client is gone")


GONE: EventStream = _Gone()


@dataclass(slots=True)
class StreamOutcome:
    """How a relay went; what the stream carried is `OpenedStream.seen`."""

    first_content_at: float | None = None
    failure: UpstreamFailure | None = None
    client_gone: bool = False


@dataclass(slots=True)
class Settled:
    usage: Usage
    cost: Decimal


class _ReadDeadline:
    """Drops a client's connection if its stream is still being written at `delay`: a client
    that stops reading (a hung process, a TCP window left full) would otherwise hold the relay in
    a write for as long as its connection stays open, and with it the upstream connection and its
    queue slot, the hold (past its TTL) and the record. One timer a stream, none a write."""

    __slots__ = ("_timer", "fired")

    def __init__(self, http: HttpRequest, delay: float) -> None:
        self.fired = False
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire, http)

    def _fire(self, http: HttpRequest) -> None:
        self.fired = True
        http.abort()  # the write waiting for room raises ConnectionError

    def cancel(self) -> None:
        self._timer.cancel()


class Responder:
    """Writes answers out; the cache learns from the ones it may keep."""

    def __init__(self, cache: ResponseCache | None, request_timeout_s: float = 600.0) -> None:
        self.cache = cache
        self.request_timeout_s = request_timeout_s
        self.end_grace_s = END_GRACE_S

    def _read_deadline(self, exchange: Exchange) -> _ReadDeadline:
        """The cut of a stream its client has not read by the request's deadline (and the grace)."""
        left = self.request_timeout_s - (time.perf_counter() - exchange.request.started)
        return _ReadDeadline(exchange.http, max(left, 0.0) + self.end_grace_s)

    @staticmethod
    def _gone(exchange: Exchange, deadline: _ReadDeadline, when: str) -> None:
        if deadline.fired:
            exchange.client_stalled()
        else:
            exchange.client_gone(when)

    async def send(self, exchange: Exchange, answer: Answer) -> Reply:
        if isinstance(answer, OpenedStream):
            return await self._relay(exchange, answer)
        if isinstance(answer, CachedAnswer):
            return await self._cached(exchange, answer)
        return await self._whole(exchange, answer)

    def whole_now(self, exchange: Exchange, answer: Answer) -> Whole | None:
        """`send` of the usual answer, which has nothing to wait for: a whole answer whose usage
        the provider reported, to a request that is not a stream. None: `send` it."""
        if type(answer) is not Served or answer.completion.usage is None or exchange.request.stream:
            return None
        exchange.answered_by(answer.candidate, answer.attempts)
        body = self._priced(exchange, answer, answer.completion.usage)
        return Whole(200, exchange.wire.answer(body, exchange.asked), exchange.headers)

    async def _whole(self, exchange: Exchange, served: Served) -> Reply:
        request, candidate, completion = exchange.request, served.candidate, served.completion
        exchange.answered_by(candidate, served.attempts)
        usage = completion.usage
        if usage is None:
            usage = await estimate_usage(request, billed_text(completion.body), 0)
        body = self._priced(exchange, served, usage)
        if request.stream:
            # A cascade step's answer, judged before it could be sent: replayed as a stream.
            return await self._replay(exchange, body, usage)
        return Whole(200, exchange.wire.answer(body, exchange.asked), exchange.headers)

    def _priced(self, exchange: Exchange, served: Served, usage: Usage) -> JSON:
        """A whole answer's body with its cost, written into the exchange; the cache may keep it."""
        candidate, body = served.candidate, served.completion.body
        cost = served_cost(candidate, usage, served.attempts)
        exchange.settled(candidate, usage, cost)
        price_answer(body, candidate.model.name, usage, cost, exchange.record.baseline_cost_usd)
        self._remember(exchange, candidate, body, usage)
        return body

    async def _cached(self, exchange: Exchange, cached: CachedAnswer) -> Reply:
        exchange.from_cache(cached)
        body = free_answer(cached.body, cached.usage, exchange.record.baseline_cost_usd)
        if exchange.request.stream:
            return await self._replay(exchange, body, cached.usage)
        return Whole(200, exchange.wire.answer(body, exchange.asked), exchange.headers)

    async def _replay(self, exchange: Exchange, body: JSON, usage: Usage) -> Reply:
        """A whole, priced answer (its usage `usage`) sent as the chunks of a stream."""
        include_usage = exchange.request.include_usage
        model = exchange.record.model_used or str(body.get("model") or "")  # the body's own name
        # The input count is known up front, as a Messages upstream says it in its message_start.
        encoder = exchange.wire.stream(model, include_usage, exchange.asked, usage.uncached_prompt_tokens)
        chunks = answer_as_chunks(body, include_usage)
        usage_frame = chunks.pop() if include_usage else None
        deadline = self._read_deadline(exchange)
        try:
            response = await exchange.http.open_stream({**exchange.headers, "Cache-Control": "no-cache"})
            for chunk in chunks:
                await response.write(encoder.chunk(chunk))
                exchange.first_content(time.perf_counter())
            await response.write(encoder.close(usage_frame))
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            self._gone(exchange, deadline, "during the stream")
            return GONE
        finally:
            deadline.cancel()
        return response

    async def _relay(self, exchange: Exchange, opened: OpenedStream) -> Reply:
        request, candidate = exchange.request, opened.candidate
        exchange.answered_by(candidate, opened.attempts)
        try:
            response = await exchange.http.open_stream({**exchange.headers, **SSE_HEADERS})
        except (ConnectionResetError, ConnectionError):
            await opened.aclose()
            exchange.client_gone("before the stream started")
            # What the upstream sent while the stream was held back (a reasoning model's thinking,
            # the first content) was billed upstream: charged, though never relayed.
            opened.take_opened()
            await self._settle_seen(exchange, opened, cut=True)
            return GONE
        input_tokens = opened.upstream_input_tokens()
        if input_tokens is None and exchange.wire.input_count_up_front and exchange.plan is not None:
            # Any other upstream says its count only at the end: until then (a client's context
            # meter reads it live) the gateway's own count, the one its reservation uses.
            prompt = exchange.plan.prompt
            input_tokens = await prompt.exact() if prompt is not None else None
        encoder = exchange.wire.stream(
            candidate.model.name, request.include_usage, exchange.asked, input_tokens or 0
        )
        deadline = self._read_deadline(exchange)
        try:
            return await self._relay_to(exchange, opened, response, encoder, deadline)
        finally:
            deadline.cancel()

    async def _relay_to(
        self,
        exchange: Exchange,
        opened: OpenedStream,
        response: EventStream,
        encoder: StreamEncoder,
        deadline: _ReadDeadline,
    ) -> Reply:
        """`_relay` once the client's stream is open: the chunks, then its end."""
        request, candidate = exchange.request, opened.candidate
        try:
            outcome = await _relay(response, encoder, opened)
        except BaseException:
            # Cancelled mid-relay (a shutdown past its grace cancels the requests still running,
            # a server that cancels a handler whose client is gone, the read deadline's drop
            # included) or a bug: what was relayed was billed upstream, so it is charged, not released.
            await self._settle_seen(exchange, opened, cut=True)
            if deadline.fired:
                exchange.client_stalled()
            else:
                exchange.interrupted("the relay was cancelled or failed")
            raise
        if outcome.first_content_at is not None:
            exchange.first_content(outcome.first_content_at)
        seen = opened.seen
        cut = outcome.client_gone or outcome.failure is not None
        settled = await self._settle_seen(exchange, opened, cut)
        if outcome.client_gone:
            self._gone(exchange, deadline, "during the stream")
            return response
        try:
            failure = outcome.failure
            if failure is not None:
                exchange.interrupted(failure.detail)
                detail = (
                    f"The upstream stream from {candidate.offer.provider} ({candidate.model.name}) "
                    f"failed after content was sent: {failure.detail}"
                )
                failed = UpstreamFailure(failure.kind, detail, status=failure.status)
                await response.write_eof(encoder.fail(failed))
            else:
                final = None
                if request.include_usage:
                    final = usage_chunk(
                        seen.usage_chunk,
                        candidate.model.name,
                        settled.usage,
                        settled.cost,
                        exchange.record.baseline_cost_usd,
                        seen.first,
                    )
                # The closing frames go with the body's end: one system call, not two.
                await response.write_eof(encoder.close(final))
                self._remember(
                    exchange, candidate, seen.answer(candidate.model.name, settled.usage), settled.usage
                )
        except (ConnectionResetError, ConnectionError):
            self._gone(exchange, deadline, "at the end of the stream")
        return response

    @staticmethod
    async def _settle_seen(exchange: Exchange, opened: OpenedStream, cut: bool) -> Settled:
        """A relayed stream's cost: its reported usage, else an estimate of what it carried
        (`carried_usage`: a stream `cut` short after a usage reported before its end is charged
        that usage and an estimate of what followed it)."""
        candidate = opened.candidate
        usage = await carried_usage(exchange.request, opened.seen, cut)
        settled = Settled(usage, served_cost(candidate, usage, opened.attempts))
        exchange.settled(candidate, settled.usage, settled.cost)
        return settled

    def _remember(self, exchange: Exchange, candidate: Candidate, body: JSON | None, usage: Usage) -> None:
        """Keep a whole answer whose usage the provider reported (an estimate is not kept), and
        that says something (one cut blank at max_tokens is served, not kept for others) and came
        out whole (one its provider ended with `error` or `content_filter` is served, not kept),
        from the route's own model, not a fallback's (Plan.own_choice)."""
        if (
            self.cache is not None
            and exchange.cache is not None
            and exchange.cache.write  # most requests are not cacheable: no check below for them
            and body is not None
            and not usage.estimated
            and not answer_is_empty(body)
            and not ended_unfinished(body)
            and exchange.plan is not None
            and exchange.plan.own_choice(candidate.model.name, exchange.record.attempts)
        ):
            model, provider = candidate.model.name, candidate.offer.provider
            self.cache.remember(exchange.cache, exchange.request, body, model, provider, usage)


async def _relay(response: EventStream, encoder: StreamEncoder, opened: OpenedStream) -> StreamOutcome:
    """Write every chunk to the client in its wire, what one upstream read brought in one write
    (the first content in a write of its own, before the rest of its read). The caller adds the
    usage chunk (with the cost) and the end (`[DONE]` on the chat wire), or the error event; how
    the upstream stream ended (a failure, a missing finish reason) is the OpenedStream's to judge."""
    outcome = StreamOutcome()
    frames = encoder.frames
    try:
        while True:
            await response.write(frames(await opened.next_read()))
            if outcome.first_content_at is None:
                outcome.first_content_at = time.perf_counter()
    except StopAsyncIteration:
        pass
    except UpstreamFailure as failure:
        outcome.failure = failure
    except (ConnectionResetError, ConnectionError):
        outcome.client_gone = True
    finally:
        await opened.aclose()
    return outcome
