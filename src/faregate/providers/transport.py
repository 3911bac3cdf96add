"""HTTP/1.1 over asyncio Protocols and httptools: one connection, one request at a time.

A proxy's upstream hot path needs little of a general HTTP client: a POST whose head is the
same for every call to a provider but for its length, a response parsed by llhttp (through
httptools, as uvicorn does), and a body handed on as it arrives. aiohttp's client spends about
300 µs of CPU per request on everything else; this module spends a fraction of that. The pool
that owns connections (limits, keep-alive, waiters) is `providers/http.py`; the request bytes,
response headers, body decoders and errors are `providers/http_framing.py`; the Response a
caller reads is `providers/response.py`.

Deadlines: one timer per connection (`_watch`), armed at a request's head deadline unless it is
already armed earlier, and armed again for the rest when it fires early: the calls on one
connection have deadlines in increasing order, so a connection making a call every millisecond
arms about one timer per head deadline instead of one (and its cancellation) per call. A body
with an idle limit (a stream) is timed the same way: the time its last bytes came is noted, and
the timer, when it fires, is armed again at that time plus the limit if bytes came since; so a
stream arms about one timer per idle limit, not one per read.

Per-message state lives on the Connection, not on the Response: the connection keeps no
reference to the Response it handed out, so a Response its caller drops is collected at once and
its `__del__` closes a half-read connection instead of leaking it.
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from typing import Final, Protocol, cast

import httptools

from faregate.providers.http_framing import (
    BadResponse,
    BodyIdle,
    ConnectionClosed,
    Decoder,
    TransportError,
    body_decoder,
)
from faregate.providers.response import Response

# Body bytes buffered before the socket stops being read: a slow consumer makes TCP push back
# on the upstream instead of growing our memory.
HIGH_WATER: Final = 1 << 20

# Connection states, set by the pool (plain ints: compared on every request).
NEW: Final = 0  # connecting, or taken out of the pool; counts against the limits only
IDLE: Final = 1
ACTIVE: Final = 2  # lent to a request
CLOSED: Final = 3

# A timer may fire this much before its time (the loop's clock resolution): due all the same.
_EARLY_S: Final = 0.001

_WATCHED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


class _Unsolicited(Exception):
    """Raised inside the parser when a second response starts: nothing we asked for."""


class Slot(Protocol):
    """What a connection tells its pool (implemented per host by the pool)."""

    def reuse(self, conn: Connection) -> None:
        """The response is complete and the connection may carry another request."""

    def forget(self, conn: Connection) -> None:
        """The connection is closed or closing: free its place. Called more than once."""


class Connection(asyncio.Protocol):
    """One upstream socket: writes a request, parses the response with llhttp, buffers the body."""

    __slots__ = (
        "_body_watched",
        "_buffered",
        "_chunked",
        "_chunks",
        "_complete",
        "_deadline",
        "_decoder",
        "_encoding",
        "_error",
        "_expected",
        "_head_deadline",
        "_head_done",
        "_idle_s",
        "_in_flight",
        "_informational",
        "_keep_alive",
        "_last_data",
        "_loop",
        "_parser",
        "_paused",
        "_received",
        "_timer",
        "_timer_at",
        "_waiter",
        "idle_since",
        "raw_headers",
        "reason",
        "slot",
        "state",
        "status",
        "transport",
    )

    def __init__(self, slot: Slot, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.state = NEW
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        self._in_flight = False
        self._head_deadline = 0.0
        self._deadline = 0.0
        self._idle_s = 0.0  # the body's idle limit (0: none)
        self._last_data = 0.0  # loop time of the head or of the last body bytes, with an idle limit
        self._paused = False
        self._new_message()

    def _new_message(self) -> None:
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._expected: int | None = None
        self._chunked = False
        self._encoding = b""
        self._decoder: Decoder | None = None
        self._informational = False
        self._head_done = False
        self._body_watched = False  # the body deadline is enforced from the first wait for body bytes
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._received = 0

    @property
    def usable(self) -> bool:
        """Open, and not already shutting down (a server's FIN may be queued but not yet seen)."""
        return self.state != CLOSED and self.transport is not None and not self.transport.is_closing()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # asyncio and uvloop already do this for TCP; be explicit, it is the whole point
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.forget(self)
        self._cancel_timer()
        if self._in_flight and not self._complete and self._error is None:
            if exc is None and self._head_done and self._expected is None and not self._chunked:
                self._finish_body()  # a body delimited by a clean end of the connection is now whole
            else:
                self._error = ConnectionClosed(self._describe_loss(exc))
            self._wake()

    def data_received(self, data: bytes) -> None:
        if not self._in_flight or self._complete:
            # Bytes nobody asked for (on an idle connection, or after the response): the
            # connection's framing can no longer be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("invalid HTTP response: the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(self._parser_complaint(exc)))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Unsolicited

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        lname = name.lower()
        if lname in _WATCHED:
            if lname == b"content-length":
                self._expected = int(value)  # llhttp has checked it is digits
            elif lname == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            else:
                self._encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx (103 Early Hints, a stray 100 Continue): the real response follows.
            self._informational = True
            return
        self.status = status
        if self._encoding:
            self._decoder = body_decoder(self._encoding)
        self._head_done = True
        if self._idle_s:
            self._last_data = self._loop.time()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
        if self._idle_s:
            self._last_data = self._loop.time()
        if self._decoder is not None:
            body = self._decoder.decompress(body)
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._new_message()
            return
        self._finish_body()
        transport = self.transport
        # A server that answered before reading all of our body would read its rest as a request.
        self._keep_alive = (
            self._parser.should_keep_alive()
            and transport is not None
            and not transport.get_write_buffer_size()
        )
        self._wake()

    # --- driven by the pool and the Response --------------------------------------------------

    async def exchange(
        self, payload: bytes, head_deadline: float, deadline: float, idle_s: float = 0.0
    ) -> Response:
        """Send one request and wait for its response head until `head_deadline` (loop time).
        The body must then arrive by `deadline`, and (`idle_s` > 0) without a silence of
        `idle_s` seconds after the head or between its bytes (BodyIdle)."""
        transport = self.transport
        assert transport is not None and self.state == ACTIVE
        self._new_message()
        self._in_flight = True
        self._head_deadline = head_deadline
        self._deadline = deadline
        self._idle_s = idle_s
        transport.write(payload)
        waiter = self._waiter = self._loop.create_future()
        self._arm(head_deadline)
        try:
            await waiter
        except BaseException:  # cancelled: the response may still come, on a connection nobody reads
            self.close()
            raise
        if not self._head_done:
            error = self._error
            self.close()
            assert error is not None
            raise error
        return Response(self)

    async def read_chunk(self) -> bytes:
        """The body bytes received so far that were not yet returned, waiting for some if there
        are none; b"" once the body is complete. Bytes received before a failure come first."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if self.transport is not None and not self.transport.is_closing():
                        self.transport.resume_reading()
                    if self._idle_s:
                        # The upstream could not send while we did not read: its silence starts now.
                        self._last_data = self._loop.time()
                        if self._body_watched:
                            self._arm(self._body_deadline())
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            if not self._body_watched:
                self._body_watched = True
                self._arm(self._body_deadline())
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except BaseException:
                self.close()
                raise

    def whole_body(self) -> bytes | None:
        """`read_chunk` until b"" when the body is complete and all of it is here (no wait):
        the rest of the body; None: read it."""
        if not self._complete or self._error is not None:
            return None
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def body_done(self) -> bool:
        return self._complete and not self._chunks

    def release(self) -> None:
        """The caller is done with the response: back to the pool if the response is complete
        and the server keeps the connection alive, else closed. Idempotent."""
        if not self._in_flight:
            return
        self._in_flight = False
        if self._complete and self._keep_alive and self._error is None and self.usable:
            # Unread bytes of a complete response are dropped: the connection itself is clean.
            self._chunks = []
            self._buffered = 0
            if self._paused:
                self._paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            self.slot.reuse(self)
        else:
            self.close()

    def close(self, error: TransportError | None = None) -> None:
        """Close now; a request in flight fails with `error` (or reads what it has, if complete)."""
        if error is not None and self._in_flight and not self._complete and self._error is None:
            self._error = error
            self._wake()
        self.slot.forget(self)
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # Half-read: drop what the kernel holds rather than read it; complete: close politely.
            if self._complete or not self._in_flight:
                transport.close()
            else:
                transport.abort()

    # --- internals ----------------------------------------------------------------------------

    def _finish_body(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
                self._buffered += len(tail)
        self._complete = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: TransportError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()
        self.close()

    def _arm(self, deadline: float) -> None:
        """Make sure `_watch` runs by `deadline` (loop time)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return  # fires first: `_watch` arms it again for the rest
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        """The deadline of the message in flight: its head's until the head is in, then (once a
        reader has waited for body bytes) its body's; a timer left from an earlier call, which
        fires before it, is armed again for the rest."""
        self._timer = None
        if not self._in_flight or self._complete or self._error is not None:
            return  # nothing to time: armed again by the next call
        if not self._head_done:
            deadline = self._head_deadline
        elif self._body_watched:
            deadline = self._body_deadline()
        else:
            return  # between the head and the first read: `read_chunk` arms it
        if self._loop.time() < deadline - _EARLY_S:
            self._arm(deadline)
            return
        self._error = BodyIdle() if self._head_done and deadline < self._deadline else TimeoutError()
        self._wake()
        self.close()

    def _body_deadline(self) -> float:
        """When the body times out: at the call's deadline or, with an idle limit, sooner once
        that long has passed since its last bytes (not while reading is paused: the silence of
        an upstream we stopped reading is ours)."""
        if self._idle_s and not self._paused:
            return min(self._deadline, self._last_data + self._idle_s)
        return self._deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _describe_loss(self, exc: Exception | None) -> str:
        reset = isinstance(exc, ConnectionResetError)
        if not self._head_done:
            if reset:
                return "connection reset"
            return "server closed the connection" if exc is None else f"connection lost ({_plain(exc)})"
        if reset:
            return "connection reset mid-body"
        if exc is not None:
            return f"connection lost mid-body ({_plain(exc)})"
        if self._expected is not None:
            return (
                "connection closed mid-body (Not enough data to satisfy content length header: "
                f"got {self._received} of {self._expected} bytes)"
            )
        return "connection closed mid-body (the chunked body did not end)"

    def _parser_complaint(self, exc: httptools.HttpParserError) -> str:
        cause = exc.__context__
        if isinstance(cause, zlib.error):
            encoding = self._encoding.decode("latin-1")
            return f"invalid HTTP response: the {encoding} body cannot be decoded ({cause})"
        if isinstance(cause, _Unsolicited):
            return "invalid HTTP response: more than one response to one request"
        return f"invalid HTTP response: {str(exc).rstrip('.') or type(exc).__name__}"


def _plain(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
