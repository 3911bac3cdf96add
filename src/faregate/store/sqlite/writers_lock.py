"""The lock file the processes serving one SQLite file (`serve --workers N`) take around each
write transaction, with a timeout.

flock wakes a waiter the moment the lock is free, unlike SQLite's busy handler, which sleeps 1,
2, 5, 10... ms between tries (store.py). But flock has no timeout: one process stuck while it holds
the lock (stopped, frozen, its event loop blocked) stalled every other process's writes forever.
Here a wait gives up after `timeout_s` with SQLite's own "database is locked" (StoreUnavailable to
the callers: a 503, records kept for a later flush), as SQLite's busy_timeout does.

How: the first try does not block. A contended wait blocks in flock on a helper thread while the
caller waits for it at most `timeout_s`. A wait given up on is not lost: the next `acquire` takes
it over, and if none comes before the lock is granted, the helper gives it back at once. So this
process never holds the lock when no one in it is writing.

Invariants: at most one wait in progress per process; `release` only by whoever `acquire` returned
to. (Locks are per open file: this process's waits never block on one another.)
"""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path


class WritersLock:
    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._mutex = threading.Lock()
        # The wait in progress on the helper thread, and whether its caller gave up on it.
        self._waiting: Future[None] | None = None
        self._abandoned = False
        self._waits: queue.SimpleQueue[Future[None] | None] = queue.SimpleQueue()
        self._helper: threading.Thread | None = None
        self._closed = False

    def acquire(self) -> None:
        """Block the calling thread until this process holds the lock; sqlite3.OperationalError
        ("database is locked") once another process has kept it `timeout_s`."""
        with self._mutex:
            waiting = self._waiting
            if waiting is None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    waiting = self._waiting = self._wait_on_helper()
            self._abandoned = False
        try:
            waiting.result(timeout=self.timeout_s)
        except TimeoutError:
            with self._mutex:
                if not waiting.done():
                    # The helper's flock goes on: the next acquire takes it over, else _granted
                    # gives the lock back.
                    self._abandoned = True
                    raise sqlite3.OperationalError(
                        f"database is locked: another process has held {self.path.name} for "
                        f"{self.timeout_s:g}s"
                    ) from None
            waiting.result()  # it ended right at the deadline: as if in time
        with self._mutex:
            if self._waiting is waiting:
                self._waiting = None

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Closes the file, which lets go of the lock; with a helper, the helper closes it once
        its wait (if any) ends, so that it never waits on a closed (or reused) descriptor."""
        with self._mutex:
            self._closed = True
            if self._helper is None:
                os.close(self._fd)
            else:
                self._waits.put(None)

    def _wait_on_helper(self) -> Future[None]:
        waiting: Future[None] = Future()
        waiting.add_done_callback(self._granted)
        if self._helper is None:
            # A daemon: a wait that never ends must not keep the process from exiting.
            self._helper = threading.Thread(target=self._help, name="faregate-writers-lock", daemon=True)
            self._helper.start()
        self._waits.put(waiting)
        return waiting

    def _help(self) -> None:
        while (waiting := self._waits.get()) is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:
                waiting.set_exception(exc)
            else:
                waiting.set_result(None)
        os.close(self._fd)

    def _granted(self, waiting: Future[None]) -> None:
        """On the helper thread, once its flock returned: give the lock back if nobody wants it."""
        with self._mutex:
            if self._waiting is not waiting:
                return  # taken over by acquire, which cleared it
            if self._abandoned or waiting.exception() is not None:
                self._waiting = None
                if waiting.exception() is None and not self._closed:
                    self.release()
