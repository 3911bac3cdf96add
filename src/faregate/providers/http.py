"""The one upstream connection pool every provider shares, tuned for a proxy's hot path.

Keep-alive HTTP/1.1 connections (see `transport.py`) per (scheme, host, port):
- Idle connections are reused newest first (LIFO): the warmest socket is the least likely to
  have been closed by the server, and the oldest ones age out instead of being kept alive by
  round-robin use. A connection the server closes while idle leaves the pool at once.
- Idle connections expire after `keepalive_timeout_s` (30 s), below the 60-75 s idle timeout
  common on upstream load balancers: reusing a connection the server has just closed fails the
  POST, which cannot safely be retried.
- `limit` caps all connections, `limit_per_host` each host (0: no per-host cap). At a cap,
  requests wait first come, first served; a connection coming free goes straight to the oldest
  waiter, and an idle connection to another host is closed to make room when the total is full.
- TLS with the system's trust store for https; DNS answers cached for `dns_ttl_s`, so a
  provider costs one lookup per TTL, not one per connection; https through the proxy that
  HTTPS_PROXY names, unless NO_PROXY exempts the host (providers/connect.py).
- No cookie jar: upstream cookies must never leak between tenants.

The head deadline covers waiting for a connection, connecting and the response head; the
connect itself is also bounded by the endpoint's connect timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import ssl
from collections import deque

from faregate import __version__
from faregate.providers.connect import Destination
from faregate.providers.http_framing import ConnectionClosed, ConnectTimeout, Endpoint, PoolClosed
from faregate.providers.response import Response
from faregate.providers.transport import ACTIVE, CLOSED, IDLE, NEW, Connection

USER_AGENT = f"faregate/{__version__}"

# A granted waiter gets None (a reserved place: open a connection) or a connection to use.
_Grant = Connection | None


class _Host:
    """The connections to one (scheme, host, port); the Slot its connections report to."""

    __slots__ = ("conns", "destination", "idle", "pool", "size", "waiters")

    def __init__(self, pool: ConnectionPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.destination = Destination(endpoint)
        self.size = 0  # open or opening
        self.conns: set[Connection] = set()
        self.idle: list[Connection] = []  # oldest first: sorted by idle_since
        self.waiters: deque[tuple[int, asyncio.Future[_Grant]]] = deque()

    def reuse(self, conn: Connection) -> None:
        self.pool._reuse(self, conn)

    def forget(self, conn: Connection) -> None:
        self.pool._forget(self, conn)


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to every upstream; create it inside the running loop's
    lifetime and `await close()` it once."""

    def __init__(
        self,
        *,
        limit: int = 1000,
        limit_per_host: int = 0,
        keepalive_timeout_s: float = 30.0,
        dns_ttl_s: float = 300.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if limit < 1 or limit_per_host < 0:
            raise ValueError("limit must be at least 1 and limit_per_host at least 0")
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.keepalive_timeout_s = keepalive_timeout_s
        self.dns_ttl_s = dns_ttl_s
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._size = 0
        self._in_use = 0
        self._waiting = 0
        self._order = itertools.count()
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # --- figures (tests, metrics) -------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return self._size

    @property
    def in_use(self) -> int:
        """Connections lent to a request whose response is not yet released."""
        return self._in_use

    @property
    def idle(self) -> int:
        return sum(len(host.idle) for host in self._hosts.values())

    @property
    def waiting(self) -> int:
        """Requests queued for a connection at a cap."""
        return self._waiting

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # made on first use: loading the trust store takes ms
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    # --- the request --------------------------------------------------------------------------

    async def request(
        self,
        endpoint: Endpoint,
        payload: bytes,
        *,
        head_timeout_s: float,
        total_timeout_s: float,
        idle_timeout_s: float | None = None,
    ) -> Response:
        """Send `payload` (a whole request, see transport.request_bytes) to `endpoint` and return
        the response once its head is in. Raises TimeoutError when there is no head within
        `head_timeout_s` (queueing and connecting included) and TransportError subclasses for
        the rest; a body not complete within `total_timeout_s` raises TimeoutError when read, and
        one from which nothing arrives for `idle_timeout_s` (after the head, between reads; None:
        no such bound) raises BodyIdle, a TimeoutError."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        head_deadline = now + head_timeout_s
        host = self._hosts.get(endpoint.key)
        if host is None:
            host = self._hosts[endpoint.key] = _Host(self, endpoint)
        conn = self._take_idle(host, now) if host.idle else None
        if conn is None:
            conn = await self._acquire(host, endpoint, head_deadline)
        return await conn.exchange(payload, head_deadline, now + total_timeout_s, idle_timeout_s or 0.0)

    def _take_idle(self, host: _Host, now: float) -> Connection | None:
        idle = host.idle
        while idle:
            conn = idle.pop()  # newest first
            conn.state = NEW
            if conn.usable and now - conn.idle_since < self.keepalive_timeout_s:
                conn.state = ACTIVE
                self._in_use += 1
                return conn
            conn.close()  # closed by the server, or too old to trust
        return None

    async def _acquire(self, host: _Host, endpoint: Endpoint, head_deadline: float) -> Connection:
        assert self._loop is not None
        while True:
            if self.closed:
                raise PoolClosed("the connection pool is closed")
            if self._room(host) or (self._per_host_room(host) and self._evict_idle(host)):
                self._reserve(host)
                return await self._connect(host, endpoint, head_deadline)
            granted = await self._wait(host, head_deadline)
            if granted is None:  # a place was reserved for us
                return await self._connect(host, endpoint, head_deadline)
            if granted.usable:
                return granted
            granted.close()  # died between the hand-over and now; try again
            conn = self._take_idle(host, self._loop.time())
            if conn is not None:
                return conn

    def _per_host_room(self, host: _Host) -> bool:
        return not self.limit_per_host or host.size < self.limit_per_host

    def _room(self, host: _Host) -> bool:
        return self._size < self.limit and self._per_host_room(host)

    def _reserve(self, host: _Host) -> None:
        self._size += 1
        host.size += 1

    def _evict_idle(self, host: _Host) -> bool:
        """At the total cap: close the longest-idle connection to another host to make room.
        True if the room is ours (no earlier waiter took it)."""
        oldest: _Host | None = None
        for other in self._hosts.values():
            if other is not host and other.idle:
                if oldest is None or other.idle[0].idle_since < oldest.idle[0].idle_since:
                    oldest = other
        if oldest is None:
            return False
        oldest.idle[0].close()
        return self._room(host)

    async def _wait(self, host: _Host, head_deadline: float) -> _Grant:
        assert self._loop is not None
        waiter: asyncio.Future[_Grant] = self._loop.create_future()
        entry = (next(self._order), waiter)
        host.waiters.append(entry)
        self._waiting += 1
        try:
            async with asyncio.timeout_at(head_deadline):
                return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(host, waiter.result())  # granted, but we are leaving
            else:
                try:
                    host.waiters.remove(entry)
                    self._waiting -= 1
                except ValueError:
                    pass
            raise

    def _give_back(self, host: _Host, grant: _Grant) -> None:
        if grant is None:
            self._size -= 1
            host.size -= 1
            self._grant()
        else:
            self._reuse(host, grant)

    async def _connect(self, host: _Host, endpoint: Endpoint, head_deadline: float) -> Connection:
        """Open a connection in a place already reserved for it."""
        loop = self._loop
        assert loop is not None
        conn = Connection(host, loop)
        host.conns.add(conn)
        connect_deadline = loop.time() + endpoint.connect_timeout_s
        try:
            async with asyncio.timeout_at(min(connect_deadline, head_deadline)):
                tls = self.ssl_context if host.destination.tls else None
                await host.destination.connect(loop, conn, tls, self.dns_ttl_s)
        except TimeoutError:
            conn.close()
            if connect_deadline <= head_deadline:
                raise ConnectTimeout(f"could not connect within {endpoint.connect_timeout_s:g}s") from None
            raise
        except BaseException:
            conn.close()
            raise
        if conn.state == CLOSED or not conn.usable:
            conn.close()
            raise ConnectionClosed("server closed the connection")
        conn.state = ACTIVE
        self._in_use += 1
        return conn

    # --- connections coming back --------------------------------------------------------------

    def _reuse(self, host: _Host, conn: Connection) -> None:
        """A lent connection is free again: to this host's oldest waiter, or idle."""
        waiters = host.waiters
        while waiters:
            _, waiter = waiters.popleft()
            self._waiting -= 1
            if not waiter.done():
                waiter.set_result(conn)  # stays in use: handed straight over
                return
        if self.closed or (self._waiting and self._size >= self.limit and self._others_may_open(host)):
            # Requests for other hosts wait for room at the total cap: free this place for them.
            conn.close()
            return
        conn.state = IDLE
        assert self._loop is not None
        conn.idle_since = self._loop.time()
        host.idle.append(conn)
        self._in_use -= 1
        if self._sweeper is None and math.isfinite(self.keepalive_timeout_s):
            self._sweeper = self._loop.call_later(max(self.keepalive_timeout_s / 4, 0.01), self._sweep)

    def _others_may_open(self, host: _Host) -> bool:
        return any(
            other is not host and other.waiters and self._per_host_room(other)
            for other in self._hosts.values()
        )

    def _forget(self, host: _Host, conn: Connection) -> None:
        state = conn.state
        if state == CLOSED:
            return
        if state == IDLE:
            host.idle.remove(conn)
        elif state == ACTIVE:
            self._in_use -= 1
        conn.state = CLOSED
        host.conns.discard(conn)
        host.size -= 1
        self._size -= 1
        if self._waiting and not self.closed:
            self._grant()

    def _grant(self) -> None:
        """A place is free: reserve it for the longest-waiting request whose host may open one."""
        if self._size >= self.limit:
            return
        best: _Host | None = None
        for host in self._hosts.values():
            waiters = host.waiters
            while waiters and waiters[0][1].done():  # timed out or cancelled
                waiters.popleft()
                self._waiting -= 1
            if waiters and self._per_host_room(host) and (best is None or waiters[0][0] < best.waiters[0][0]):
                best = host
        if best is not None:
            _, waiter = best.waiters.popleft()
            self._waiting -= 1
            self._reserve(best)
            waiter.set_result(None)

    def _sweep(self) -> None:
        """Close connections idle past the keep-alive time (the oldest are first in each list)."""
        assert self._loop is not None
        self._sweeper = None
        cutoff = self._loop.time() - self.keepalive_timeout_s
        remaining = False
        for host in self._hosts.values():
            idle = host.idle
            expired = 0
            while expired < len(idle) and idle[expired].idle_since <= cutoff:
                expired += 1
            stale = idle[:expired]
            del idle[:expired]
            for conn in stale:
                conn.state = NEW
                conn.close()
            remaining = remaining or bool(idle)
        if remaining:
            self._sweeper = self._loop.call_later(max(self.keepalive_timeout_s / 4, 0.01), self._sweep)

    async def close(self) -> None:
        """Close every connection; requests in flight fail with PoolClosed."""
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        error = PoolClosed("the connection pool is closed")
        for host in self._hosts.values():
            while host.waiters:
                _, waiter = host.waiters.popleft()
                self._waiting -= 1
                if not waiter.done():
                    waiter.set_exception(error)
            for conn in list(host.conns):
                conn.close(error)
        await asyncio.sleep(0)  # let the transports report connection_lost
