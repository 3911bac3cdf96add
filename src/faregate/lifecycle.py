"""Start and stop what a process runs: one exit stack for its resources, one helper for its loops.

`Lifecycle` is the process's exit stack (contextlib.AsyncExitStack): each resource, as it is
opened or started, registers how to close it; `aclose()` runs those closes once, newest first,
so a thing is closed before what it needs (the record writer's last flush before the store).
Every close is bounded: one that does not finish in its time (a database that stopped answering)
is abandoned with a warning, and one that fails is logged; the closes after it still run. So a
shutdown always ends, and a failure half-way through start-up closes whatever was opened.

`Periodic` is the one way a background loop is written: it runs an action again and again in
its own task, `interval_s` apart (a number, or a function read before each wait, so a loop can
back off or hurry), sooner when woken; a failing round is logged and the next one runs anyway
(stores come back; the work is idempotent). `stop()` lets a round in progress finish for up to
`grace_s`, then cancels it.

`drain` is how a stop waits for the requests in flight: up to a deadline, then they are cancelled
and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from contextlib import AsyncExitStack
from typing import Any

log = logging.getLogger("faregate.lifecycle")

# How long one close may take unless its registration says otherwise.
CLOSE_TIMEOUT_S = 10.0

# One round of a loop (what it returns is ignored).
Action = Callable[[], Awaitable[object]]


class Periodic:
    """A background loop: `action` every `interval_s` seconds (a number, or a function read before
    each wait), the first round at once when `run_first`."""

    def __init__(
        self,
        name: str,
        interval_s: float | Callable[[], float],
        action: Action,
        *,
        run_first: bool = False,
    ) -> None:
        self.name = name
        self._interval = interval_s if callable(interval_s) else (lambda: interval_s)
        self._action = action
        self._run_first = run_first
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=f"faregate-{self.name}")

    def wake(self) -> None:
        """Run the next round now instead of at the end of the wait."""
        self._wake.set()

    async def stop(self, grace_s: float = 0.0) -> None:
        """End the loop: a round in progress may finish within `grace_s`, then it is cancelled.
        Idempotent; returns once the task is gone."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        if grace_s > 0 and not task.done():
            # shield: the wait ending must not cancel the round it waits for.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), grace_s)
        if not task.done():
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # The loop's own cancellation ends here; the caller's (a close given up at its
            # deadline) goes on up, or the caller would carry on past its deadline.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _run(self) -> None:
        delay = 0.0 if self._run_first else self._interval()
        while not self._stopping:
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self._action()
            except Exception:
                log.exception("%s failed; trying again in %.1fs", self.name, self._interval())
            self.rounds += 1
            delay = self._interval()


class Lifecycle:
    """The exit stack of a process (or of one command): what was opened, closed once, newest
    first, each close within its bound."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()

    def on_close(
        self, what: str, close: Callable[[], Awaitable[object]], timeout_s: float = CLOSE_TIMEOUT_S
    ) -> None:
        """Run `close()` at `aclose`, before everything registered earlier."""
        self._stack.push_async_callback(_bounded, what, close, timeout_s)

    def periodic(
        self,
        name: str,
        interval_s: float | Callable[[], float],
        action: Action,
        *,
        run_first: bool = False,
        grace_s: float = 0.0,
    ) -> Periodic:
        """Start a `Periodic` now and stop it at `aclose`."""
        loop = Periodic(name, interval_s, action, run_first=run_first)
        loop.start()
        self.on_close(name, lambda: loop.stop(grace_s))
        return loop

    def spawn(self, name: str, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        """Run `work` once in the background; cancelled at `aclose` if it has not finished. A
        failure is logged (nobody awaits the task)."""
        task: asyncio.Task[object] = asyncio.create_task(work, name=f"faregate-{name}")
        task.add_done_callback(lambda done: _report(name, done))

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        self.on_close(name, cancel)
        return task

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> Lifecycle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _bounded(what: str, close: Callable[[], Awaitable[object]], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await close()
    except TimeoutError:
        log.warning("closing %s: gave up after %.0fs", what, timeout_s)
    except Exception:
        log.exception("closing %s failed", what)


async def drain(tasks: Collection[asyncio.Task[Any]], timeout_s: float | None) -> None:
    """Let `tasks` finish within `timeout_s` (None: however long they take), then cancel those
    still running and wait until they have ended (a cancelled request settles and records on its
    way out)."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(BaseException):
            await task


def _report(name: str, task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", name, task.exception(), exc_info=task.exception())
