"""A served stream: what the attempt loop hands the responder once a stream has real content.

Reading it yields the chunks read while it was opened (`buffered`), then the rest as they come,
each read into `seen` (wire.openai.StreamedAnswer: its text, finish reason and usage); the
trailing usage-only chunk is kept there, not yielded, for the responder to add the cost to.
How it ended is judged here, in routing, not by whoever reads it: a stream that stops without a
finish reason raises UpstreamFailure("truncated"); a failure is written into the served attempt
(its outcome and detail, for the record); and the offer's health learns the outcome exactly once,
when the stream ends, fails, or is closed by a reader that stopped early (a client that went
away: the upstream served it well, so that counts as a success).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from faregate.errors import UpstreamFailure
from faregate.providers.base import aclose_quietly
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Candidate
from faregate.types import JSON, Attempt
from faregate.wire.openai import StreamedAnswer

# Failures that say nothing about the provider's health.
NOT_HEALTH_SIGNALS = frozenset({"rejected"})


class OpenedStream:
    """An upstream stream that has produced its first real content; iterate it once."""

    __slots__ = (
        "_api_key",
        "_ended",
        "_health",
        "_next",
        "attempts",
        "buffered",
        "candidate",
        "first_content_at",
        "rest",
        "seen",
        "started",
    )

    def __init__(
        self,
        candidate: Candidate,
        buffered: list[JSON],
        rest: AsyncIterator[JSON],
        attempts: list[Attempt],
        started: float,
        health: HealthBoard,
        api_key: str | None,
    ) -> None:
        self.candidate = candidate
        self.buffered = buffered
        self.rest = rest
        self.attempts = attempts
        self.started = started
        self.first_content_at = time.perf_counter()
        self._health = health
        self._api_key = api_key
        self.seen = StreamedAnswer()
        self._next = 0  # the next buffered chunk to yield
        self._ended = False  # the health has been told

    def __aiter__(self) -> OpenedStream:
        return self

    async def __anext__(self) -> JSON:
        while True:
            if self._next < len(self.buffered):
                chunk = self.buffered[self._next]
                self._next += 1
            else:
                chunk = await self._read()
            if self.seen.take(chunk):
                return chunk

    async def _read(self) -> JSON:
        try:
            return await anext(self.rest)
        except StopAsyncIteration:
            if self.seen.finish_reason is not None:
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
        if failure.kind not in NOT_HEALTH_SIGNALS:
            self._health.failure(key, self._api_key)
