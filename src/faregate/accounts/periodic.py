"""A background task that runs one coroutine every few seconds and survives its failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("faregate.accounts")


class Periodic:
    def __init__(self, name: str, interval_s: float, action: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._interval = interval_s
        self._action = action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"faregate-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._action()
            except Exception:
                # A store that is down now may be back next time; the work is idempotent.
                log.exception("%s failed; retrying in %.1fs", self.name, self._interval)
