"""The listening socket's protocol factory when `server.lean_http` is on.

It makes a `LeanConnection` (server/lean_http.py) per connection, and aiohttp's own RequestHandler
(from the aiohttp server it wraps, `fallback`) for every connection handed over to aiohttp. The
runner (server/runner.py) stops it as it stops aiohttp's server: `pre_shutdown` closes the idle
connections (a busy one closes once its request is answered), `shutdown` waits up to the
timeout for the requests in flight, then cancels what is left; both for the lean connections
and for aiohttp's.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from faregate.lifecycle import drain
from faregate.server.lean_http import LeanConnection, LeanHandler
from faregate.server.wire_routes import LeanRoutes


class LeanServer(web.Server):
    """A web.Server for the runner and its sites; serves through LeanConnection."""

    def __init__(self, fallback: web.Server, routes: LeanRoutes, max_body_bytes: int) -> None:
        super().__init__(fallback.request_handler, request_factory=fallback.request_factory)
        self.fallback = fallback
        self.loop = asyncio.get_running_loop()
        self.max_body_bytes = max_body_bytes
        self.lean_routes: dict[tuple[bytes, bytes], LeanHandler] = {
            (method.encode(), path.encode()): handler for (method, path), handler in routes.items()
        }
        self.lean: set[LeanConnection] = set()
        # Every lean connection's task (it runs the connection's requests one after another), its
        # connection open or not: a request whose client left still settles and records, and
        # shutdown waits for it. A task ends once its connection is closed or handed over and
        # its last request is answered.
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self) -> LeanConnection:  # type: ignore[override]  # any asyncio Protocol will do
        return LeanConnection(self)

    def lean_connection_made(self, conn: LeanConnection) -> None:
        self.lean.add(conn)

    def track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def lean_connection_lost(self, conn: LeanConnection) -> None:
        """Closed, or handed over to aiohttp (which tracks it from then on)."""
        self.lean.discard(conn)

    def pre_shutdown(self) -> None:
        self.fallback.pre_shutdown()
        for conn in list(self.lean):
            conn.close_when_idle()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109  # aiohttp's signature
        for conn in list(self.lean):
            conn.close_when_idle()  # (again, if pre_shutdown ran): an idle connection's task ends now
        await asyncio.gather(self.fallback.shutdown(timeout), drain(list(self.tasks), timeout))
        for conn in list(self.lean):
            if conn.transport is not None:
                conn.transport.close()
        self.lean.clear()
