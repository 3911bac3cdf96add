"""A bound on concurrent calls per upstream provider, with a priority queue in front of it.

When a provider is at `max_concurrent` calls, further callers wait; premium keys' requests are
served before standard ones, and both before a quality verification's shadow and judge calls
(which must never delay a user's response: they get a slot only when no user waits for one, and
take no user's place under `max_queued`), first come first served within a tier. A caller that
waits longer than `timeout_s`, or finds `max_queued` callers already waiting, gets 429 with
Retry-After (the attempt loop then tries the plan's next candidate, and gives the client that 429
only when no upstream was called). A stream holds its slot until it ends (or is closed).

Off unless `upstream_limits` names the provider in the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from faregate.config import UpstreamQueueSettings
from faregate.errors import RateLimited
from faregate.types import RequestMeta

# The queue's tiers, best first.
PREMIUM, STANDARD, VERIFICATION = 0, 1, 2
T = TypeVar("T")


def tier_of(request: RequestMeta) -> int:
    if request.verification:
        return VERIFICATION
    return PREMIUM if request.premium else STANDARD


class Slot:
    """One granted call; `release` is idempotent so every exit path may call it."""

    __slots__ = ("_gate", "_loop", "_released")

    def __init__(self, gate: PriorityGate | None) -> None:
        self._gate = gate
        self._released = gate is None
        self._loop = asyncio.get_running_loop() if gate is not None else None

    def release(self) -> None:
        if not self._released:
            self._released = True
            assert self._gate is not None
            self._gate.release()

    def __del__(self) -> None:
        # A slot dropped without release (a bug upstream of here) must not shrink the gate for
        # good; the gate is the event loop's, so hand the release to it.
        if not self._released and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.release)


@dataclass
class PriorityGate:
    settings: UpstreamQueueSettings
    provider: str
    active: int = 0
    _waiting: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    # Counters for health and tests.
    served_premium: int = 0
    served_standard: int = 0
    served_verification: int = 0
    timeouts: int = 0
    rejected_full: int = 0

    @property
    def queued(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    def _queued_for(self, tier: int) -> int:
        """The waiters that count against `max_queued` for a caller of `tier`: a user's request
        does not count the verifications' (served after it, and no more than the verifier's slots)."""
        if tier == VERIFICATION:
            return self.queued
        return sum(1 for waiting, _, future in self._waiting if waiting != VERIFICATION and not future.done())

    async def acquire(self, tier: int, time_left: float | None = None) -> Slot:
        if self.active < self.settings.max_concurrent and not self.queued:
            self.active += 1
            self._count(tier)
            return Slot(self)
        ahead = self._queued_for(tier)
        if ahead >= self.settings.max_queued:
            self.rejected_full += 1
            raise self._refusal(f"{ahead} requests are already waiting for it")
        timeout = self.settings.timeout_s if time_left is None else min(self.settings.timeout_s, time_left)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (tier, next(self._order), future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                # The slot was handed over just as the wait ended: give it to the next in line.
                self.release()
            else:
                future.cancel()
            if isinstance(exc, TimeoutError):
                self.timeouts += 1
                raise self._refusal(f"no slot freed up within {timeout:.1f}s") from None
            raise
        self._count(tier)
        return Slot(self)

    def release(self) -> None:
        """Hand the slot to the best waiter still waiting, or free it."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self.active -= 1

    def _count(self, tier: int) -> None:
        if tier == PREMIUM:
            self.served_premium += 1
        elif tier == STANDARD:
            self.served_standard += 1
        else:
            self.served_verification += 1

    def _refusal(self, why: str) -> RateLimited:
        retry = max(1, math.ceil(self.settings.timeout_s / 2))
        return RateLimited(
            f"The upstream provider '{self.provider}' is at its limit of {self.settings.max_concurrent} "
            f"concurrent requests and {why}. Retry after {retry}s.",
            code="upstream_queue_timeout",
            headers={"Retry-After": str(retry)},
        )


class GuardedStream(Generic[T]):
    """An upstream stream that gives its slot back when it ends, fails or is closed."""

    def __init__(self, inner: AsyncIterator[T], slot: Slot) -> None:
        self._inner = inner
        self._slot = slot

    def __aiter__(self) -> GuardedStream[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await anext(self._inner)
        except BaseException:
            self._slot.release()
            raise

    async def aclose(self) -> None:
        self._slot.release()
        closer: Any = getattr(self._inner, "aclose", None)
        if closer is not None:
            await closer()


class UpstreamLimiter:
    def __init__(self, settings: dict[str, UpstreamQueueSettings] | None = None) -> None:
        self.gates = {name: PriorityGate(s, name) for name, s in (settings or {}).items()}

    async def acquire(self, provider: str, tier: int, time_left: float | None = None) -> Slot:
        gate = self.gates.get(provider)
        if gate is None:
            return Slot(None)
        return await gate.acquire(tier, time_left)

    @contextlib.asynccontextmanager
    async def slot(self, provider: str, tier: int, time_left: float | None = None) -> AsyncIterator[None]:
        slot = await self.acquire(provider, tier, time_left)
        try:
            yield
        finally:
            slot.release()

    def guard(self, stream: AsyncIterator[T], slot: Slot) -> AsyncIterator[T]:
        return stream if slot._gate is None else GuardedStream(stream, slot)

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "max_concurrent": gate.settings.max_concurrent,
                "active": gate.active,
                "queued": gate.queued,
                "served_premium": gate.served_premium,
                "served_standard": gate.served_standard,
                "served_verification": gate.served_verification,
                "timeouts": gate.timeouts,
                "rejected_full": gate.rejected_full,
            }
            for name, gate in self.gates.items()
        }
