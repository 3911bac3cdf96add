"""A served stream: what the attempt loop hands the responder once a stream has real content.

Reading it (`next_read`) gives the chunks read while it was opened, up to and including the first
content, then the rest of the upstream read that content came in, then what each further read
brought, each chunk read into `seen` (wire.openai.StreamedAnswer: its text, finish reason and
usage); the trailing usage-only chunk is kept there, not given, for the responder to add the cost
to. A read at a time, so that the relay writes what one upstream read brought in one client write
(iterating it gives one chunk at a time).
How it ended is judged here, in routing, not by whoever reads it: a stream that stops without a
finish reason (for each of its choices, with n > 1) raises UpstreamFailure("truncated"); a
failure is written into the served attempt (its outcome and detail, for the record); and the
offer's health learns the outcome exactly once, when the stream ends, fails, or is closed by a
reader that stopped early (a client that went away: the upstream served it well, so that counts
as a success).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator

from faregate.errors import UpstreamFailure
from faregate.providers.base import aclose_quietly
from faregate.routing.health import HealthBoard, told_to_wait
from faregate.routing.plan import Candidate
from faregate.types import JSON, Attempt, ChatRequest, Usage
from faregate.usage_estimate import estimate_after, estimate_usage
from faregate.wire.anthropic_upstream_answers import INPUT_TOKENS
from faregate.wire.openai import StreamedAnswer

# Failures that say nothing about the provider's health.
NOT_HEALTH_SIGNALS = frozenset({"rejected"})


class OpenedStream:
    """An upstream stream that has produced its first real content; iterate it once."""

    __slots__ = (
        "_api_key",
        "_current",
        "_ended",
        "_health",
        "_max_retry_after_s",
        "_reads",
        "attempts",
        "candidate",
        "first_content_at",
        "rest",
        "seen",
        "started",
    )

    def __init__(
        self,
        candidate: Candidate,
        opened: list[list[JSON]],
        rest: AsyncIterator[list[JSON]],
        attempts: list[Attempt],
        started: float,
        health: HealthBoard,
        api_key: str | None,
        max_retry_after_s: float,
    ) -> None:
        self.candidate = candidate
        self.rest = rest
        self.attempts = attempts
        self.started = started
        self.first_content_at = time.perf_counter()
        self._health = health
        self._api_key = api_key
        self._max_retry_after_s = max_retry_after_s
        self.seen = StreamedAnswer()
        # What was read while opening: through the first content, then the rest of its read.
        self._reads = deque(read for read in opened if read)
        self._current: deque[JSON] = deque()  # for reading one chunk at a time
        self._ended = False  # the health has been told

    async def next_read(self) -> list[JSON]:
        """The chunks of the next read worth sending (never empty); StopAsyncIteration at the end."""
        while True:
            read = self._reads.popleft() if self._reads else await self._read()
            kept = [chunk for chunk in read if self.seen.take(chunk)]
            if kept:
                return kept

    def upstream_input_tokens(self) -> int | None:
        """The input count the upstream gave before its answer (a Messages upstream's
        message_start), taken off the first chunk so that no client sees the field; else None."""
        counted = self._reads[0][0].pop(INPUT_TOKENS, None) if self._reads else None
        return counted if type(counted) is int else None

    def take_opened(self) -> None:
        """Read into `seen`, without giving them, the chunks read while opening (for a client gone
        before any was sent: its reasoning and first content were generated and billed all the same)."""
        while self._reads:
            for chunk in self._reads.popleft():
                self.seen.take(chunk)

    def __aiter__(self) -> OpenedStream:
        return self

    async def __anext__(self) -> JSON:
        if not self._current:
            self._current.extend(await self.next_read())
        return self._current.popleft()

    async def _read(self) -> list[JSON]:
        try:
            return await anext(self.rest)
        except StopAsyncIteration:
            if self.seen.ended():
                self._end(None)
                raise
            truncated = UpstreamFailure("truncated", "stream ended without a finish_reason")
            self._end(truncated)
            raise truncated from None
        except UpstreamFailure as failure:
            self._end(failure)
            raise

    async def aclose(self) -> None:
        """Stop reading (idempotent): the upstream connection and its queue slot are given back."""
        await aclose_quietly(self.rest)
        self._end(None)

    def _end(self, failure: UpstreamFailure | None) -> None:
        if self._ended:
            return
        self._ended = True
        key = self.candidate.offer.key
        if failure is None:
            total_ms = (time.perf_counter() - self.started) * 1000
            ttft_ms = (self.first_content_at - self.started) * 1000
            self._health.success(key, total_ms, ttft_ms, api_key=self._api_key)
            return
        served = self.attempts[-1]
        served.outcome, served.detail = failure.kind, failure.detail
        if failure.kind not in NOT_HEALTH_SIGNALS and not failure.content_flagged:
            self._health.failure(key, self._api_key)
        if told_to_wait(failure, self._max_retry_after_s) and failure.retry_after is not None:
            # A rate limit inside the stream (its error event's retry delay) cools the offer as
            # one before content does: the next requests need not be cut by it to learn it.
            self._health.cool(key, self._api_key, failure.retry_after)


async def carried_usage(request: ChatRequest, seen: StreamedAnswer, cut: bool) -> Usage:
    """What a stream that carried `seen` is billed: its reported usage, else an estimate of the
    prompt and the output it carried (never below its deltas). A stream `cut` short after a usage
    reported before its end (exact up to there) is that usage plus an estimate of what followed."""
    usage = seen.usage
    if usage is not None and cut and not seen.usage_final:
        text, deltas = _carried(seen.text[seen.text_at_usage :], seen.reasoning[seen.reasoning_at_usage :])
        return await estimate_after(usage, text, deltas)
    if usage is not None:
        return usage
    text, deltas = _carried(seen.text, seen.reasoning)
    return await estimate_usage(request, text, deltas)


async def billed_before_content(request: ChatRequest, read: list[JSON]) -> Usage | None:
    """What a stream that failed before its first content (the chunks `read` so far) was billed:
    a reasoning model's thinking was generated, so it is charged as a cut stream is; a stream that
    carried no output and reported no usage is not charged its prompt (None)."""
    seen = StreamedAnswer()
    for chunk in read:
        seen.take(chunk)
    if seen.usage is None and not any(seen.text) and not any(seen.reasoning):
        return None
    return await carried_usage(request, seen, cut=True)


def _carried(text: list[str], reasoning: list[str]) -> tuple[str, int]:
    """The output text a stream carried (its answer and reasoning) and its count of deltas."""
    deltas = sum(1 for piece in text if piece) + sum(1 for piece in reasoning if piece)
    return "".join(text) + "".join(reasoning), deltas
