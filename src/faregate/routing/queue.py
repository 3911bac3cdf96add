"""A bound on concurrent calls per upstream provider, with a priority queue in front of it.

When a provider is at `max_concurrent` calls, further callers wait; premium keys' requests are
served before standard ones, first come first served within a tier. A caller that waits longer
than `timeout_s`, or finds `max_queued` callers already waiting, gets 429 with Retry-After (the
attempt loop then tries the plan's next candidate, and gives the client that 429 only when no
upstream was called). A stream holds its slot until it ends (or is closed).

A quality verification's shadow and judge calls must never delay a user's response, so they never
hold a slot a user could need: they have `verification_slots` of their own (1 by default) beyond
the users' `max_concurrent`, with a queue of their own (same timeout and bound). Taking a user's
free slot instead, a shadow call that arrived while the upstream was idle made every user who came
after it wait for it, up to a whole call. So the upstream may see `max_concurrent +
verification_slots` calls at once: where its own limit is hard, set the two to sum to it (0 slots:
verifications never call this provider; they fall back to their plan's next candidate, or fail).

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

# The queue's tiers, best first (verifications wait in a lane of their own).
PREMIUM, STANDARD, VERIFICATION = 0, 1, 2
T = TypeVar("T")


def tier_of(request: RequestMeta) -> int:
    if request.verification:
        return VERIFICATION
    return PREMIUM if request.premium else STANDARD


class Slot:
    """One granted call; `release` is idempotent so every exit path may call it."""

    __slots__ = ("_lane", "_loop", "_released")

    def __init__(self, lane: Lane | None) -> None:
        self._lane = lane
        self._released = lane is None
        self._loop = asyncio.get_running_loop() if lane is not None else None

    @property
    def limited(self) -> bool:
        return self._lane is not None

    def release(self) -> None:
        if not self._released:
            self._released = True
            assert self._lane is not None
            self._lane.release()

    def __del__(self) -> None:
        # A slot dropped without release (a bug upstream of here) must not shrink the gate for
        # good; the gate is the event loop's, so hand the release to it.
        if not self._released and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.release)


@dataclass
class Lane:
    """`size` concurrent calls and the callers waiting for one, best tier first, then in order."""

    size: int
    active: int = 0
    _waiting: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def queued(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    def take(self) -> bool:
        """A slot at once, if one is free and nobody waits for it."""
        if self.active < self.size and not self.queued:
            self.active += 1
            return True
        return False

    async def wait(self, tier: int, limit_s: float) -> None:
        """Wait in line for a slot (TimeoutError after `limit_s`)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (tier, next(self._order), future))
        try:
            async with asyncio.timeout(limit_s):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The slot was handed over just as the wait ended: give it to the next in line.
                self.release()
            else:
                future.cancel()
            raise

    def release(self) -> None:
        """Hand the slot to the best waiter still waiting, or free it."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self.active -= 1


@dataclass
class PriorityGate:
    settings: UpstreamQueueSettings
    provider: str
    # The users' `max_concurrent` slots, and the verifications' own (module docstring).
    users: Lane = field(init=False)
    verifications: Lane = field(init=False)
    # Counters for health and tests.
    served_premium: int = 0
    served_standard: int = 0
    served_verification: int = 0
    timeouts: int = 0
    rejected_full: int = 0

    def __post_init__(self) -> None:
        self.users = Lane(self.settings.max_concurrent)
        self.verifications = Lane(self.settings.verification_slots)

    @property
    def active(self) -> int:
        """Users' calls under way."""
        return self.users.active

    @property
    def queued(self) -> int:
        """Users' calls waiting."""
        return self.users.queued

    async def acquire(self, tier: int, time_left: float | None = None) -> Slot:
        lane = self.verifications if tier == VERIFICATION else self.users
        if lane.take():
            self._count(tier)
            return Slot(lane)
        if not lane.size:
            self.rejected_full += 1
            raise self._refusal(lane, "none is ever made there (verification_slots: 0)")
        if lane.queued >= self.settings.max_queued:
            self.rejected_full += 1
            raise self._refusal(lane, f"{lane.queued} requests are already waiting for it")
        timeout = self.settings.timeout_s if time_left is None else min(self.settings.timeout_s, time_left)
        try:
            await lane.wait(tier, timeout)
        except TimeoutError:
            self.timeouts += 1
            raise self._refusal(lane, f"no slot freed up within {timeout:.1f}s") from None
        self._count(tier)
        return Slot(lane)

    def _count(self, tier: int) -> None:
        if tier == PREMIUM:
            self.served_premium += 1
        elif tier == STANDARD:
            self.served_standard += 1
        else:
            self.served_verification += 1

    def _refusal(self, lane: Lane, why: str) -> RateLimited:
        retry = max(1, math.ceil(self.settings.timeout_s / 2))
        calls = "quality verification calls" if lane is self.verifications else "requests"
        return RateLimited(
            f"The upstream provider '{self.provider}' is at its limit of {lane.size} concurrent "
            f"{calls} and {why}. Retry after {retry}s.",
            code="upstream_queue_timeout",
            headers={"Retry-After": str(retry)},
        )

    def snapshot(self) -> dict[str, int]:
        return {
            "max_concurrent": self.settings.max_concurrent,
            "active": self.active,
            "queued": self.queued,
            "verification_slots": self.verifications.size,
            "verifications_active": self.verifications.active,
            "verifications_queued": self.verifications.queued,
            "served_premium": self.served_premium,
            "served_standard": self.served_standard,
            "served_verification": self.served_verification,
            "timeouts": self.timeouts,
            "rejected_full": self.rejected_full,
        }


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
        return GuardedStream(stream, slot) if slot.limited else stream

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: gate.snapshot() for name, gate in self.gates.items()}
