"""Cache hits whose rate-limit count Redis took but did not answer in time, given back.

A count sent to a Redis that stops answering (frozen, partitioned) times out, and the client gets
a 503; Redis runs the count once it answers again, so the key lost a request of its minute's
allowance for an answer it never got. Each such count is given back in the background, once a
second until Redis takes it (for `GIVE_BACK_FOR_S`): given back if it ran, and not taken if it
runs later (store.redis.scripts, TAKE_REQUEST's ticket). A stop cancels what is still waiting:
a key may then lose one request of a minute, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

log = logging.getLogger("faregate.accounts")

# How long a give-back is tried: past it the count is forgotten (the key's minute is long over).
GIVE_BACK_FOR_S = 600.0
RETRY_S = 1.0

GiveBack = Callable[[str, str, int], Awaitable[object]]  # key id, ticket, requests per minute


class HitGiveBacks:
    def __init__(self, give_back: GiveBack) -> None:
        self._give_back = give_back
        self._waiting: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def later(self, key_id: str, ticket: str, requests_per_minute: int) -> None:
        task = asyncio.create_task(self._until_taken(key_id, ticket, requests_per_minute))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _until_taken(self, key_id: str, ticket: str, rpm: int) -> None:
        deadline = time.monotonic() + GIVE_BACK_FOR_S
        while True:
            await asyncio.sleep(RETRY_S)  # Redis has just failed to answer: not at once
            try:
                await self._give_back(key_id, ticket, rpm)
                return
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    log.warning("a cache hit's count for key %s was not given back: %s", key_id, exc)
                    return

    async def close(self) -> None:
        for task in list(self._waiting):
            task.cancel()
        for task in list(self._waiting):
            with contextlib.suppress(asyncio.CancelledError):
                await task
