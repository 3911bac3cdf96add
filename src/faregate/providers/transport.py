"""HTTP/1.1 over asyncio Protocols and httptools: one connection, one request at a time.

A proxy's upstream hot path needs little of a general HTTP client: a POST whose head is the
same for every call to a provider but for its length, a response parsed by llhttp (through
httptools, as uvicorn does), and a body handed on as it arrives. aiohttp's client spends about
300 µs of CPU per request on everything else; this module spends a fraction of that. The pool
that owns connections (limits, keep-alive, waiters) is `providers/http.py`.

Per-message state lives on the Connection, not on the Response: the connection keeps no
reference to the Response it handed out, so a Response its caller drops is collected at once and
its `__del__` closes a half-read connection instead of leaking it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import zlib
from collections.abc import Iterator, Mapping
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

import httptools

# Body bytes buffered before the socket stops being read: a slow consumer makes TCP push back
# on the upstream instead of growing our memory.
HIGH_WATER: Final = 1 << 20

# Connection states, set by the pool (plain ints: compared on every request).
NEW: Final = 0  # connecting, or taken out of the pool; counts against the limits only
IDLE: Final = 1
ACTIVE: Final = 2  # lent to a request
CLOSED: Final = 3

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# We frame the body ourselves; a configured header must not contradict that.
_FRAMING_REQUEST_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_WATCHED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


class TransportError(Exception):
    """An exchange that failed; str() says what happened in plain words."""


class ConnectFailed(TransportError):
    """No connection: DNS, refused, unreachable, or a failed TLS handshake."""


class ConnectTimeout(TransportError):
    """The TCP connect (and TLS handshake) did not finish in time."""


class ConnectionClosed(TransportError):
    """The connection ended before the response did."""


class BadResponse(TransportError):
    """The upstream's bytes are not a valid HTTP/1.x response."""


class PoolClosed(TransportError):
    """The pool was closed (the gateway is shutting down)."""


class _Unsolicited(Exception):
    """Raised inside the parser when a second response starts: nothing we asked for."""


class Endpoint:
    """Where the requests for one base URL go, parsed once per provider."""

    __slots__ = ("authority", "connect_timeout_s", "host", "key", "path", "port", "tls")

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
        host = parts.hostname
        if not host:
            raise ValueError(f"{url!r} has no host")
        self.tls = scheme == "https"
        default_port = 443 if self.tls else 80
        self.port: int = parts.port or default_port
        self.host = host
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        bracketed = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self.authority = bracketed if self.port == default_port else f"{bracketed}:{self.port}"
        self.key = (scheme, host, self.port)
        self.connect_timeout_s = connect_timeout_s

    def __repr__(self) -> str:
        return f"Endpoint({'https' if self.tls else 'http'}://{self.authority}{self.path})"


def request_head(endpoint: Endpoint, headers: Mapping[str, str]) -> bytes:
    """The request line and headers of a POST to `endpoint`, up to but not including
    Content-Length, which `request_bytes` adds per body. Built once per provider.

    A configured Host replaces ours; Content-Length, Transfer-Encoding and Connection are ours
    alone (the body framing and keep-alive depend on them) and are dropped if configured.
    Raises ValueError for a header that could split the request (CR, LF, NUL, or a bad name).
    """
    lines = [f"POST {endpoint.path} HTTP/1.1"]
    if not any(name.lower() == "host" for name in headers):
        lines.append(f"Host: {endpoint.authority}")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name}: the value contains a line break or NUL")
        if name.lower() not in _FRAMING_REQUEST_HEADERS:
            lines.append(f"{name}: {value}")
    lines.append("")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header values must be Latin-1 text: {exc}") from None


def request_bytes(head: bytes, body: bytes) -> bytes:
    """The whole request, built with one join (one copy of each part)."""
    return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))


class Headers(Mapping[str, str]):
    """Response headers with case-insensitive lookup; repeated fields are joined with ", "."""

    __slots__ = ("_map",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        fields: dict[str, str] = {}
        for raw_name, raw_value in raw:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        self._map = fields

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({self._map!r})"


class Slot(Protocol):
    """What a connection tells its pool (implemented per host by the pool)."""

    def reuse(self, conn: Connection) -> None:
        """The response is complete and the connection may carry another request."""

    def forget(self, conn: Connection) -> None:
        """The connection is closed or closing: free its place. Called more than once."""


class _Decoder(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Inflate:
    """`deflate` is meant to be zlib-wrapped, but some servers send raw deflate: try both."""

    __slots__ = ("_first", "_z")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zlib.MAX_WBITS)
        self._first = True

    def decompress(self, data: bytes, /) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._z.decompress(data)
            except zlib.error:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


def _decoder(encoding: bytes) -> _Decoder | None:
    """We never send Accept-Encoding, but a server may compress anyway. Other encodings pass
    through as they are (the JSON parse then fails with a clear message)."""
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return _Inflate()
    return None


class Connection(asyncio.Protocol):
    """One upstream socket: writes a request, parses the response with llhttp, buffers the body."""

    __slots__ = (
        "_buffered",
        "_chunked",
        "_chunks",
        "_complete",
        "_deadline",
        "_decoder",
        "_encoding",
        "_error",
        "_expected",
        "_head_done",
        "_in_flight",
        "_informational",
        "_keep_alive",
        "_loop",
        "_parser",
        "_paused",
        "_received",
        "_timer",
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
        self._in_flight = False
        self._deadline = 0.0
        self._paused = False
        self._new_message()

    def _new_message(self) -> None:
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._expected: int | None = None
        self._chunked = False
        self._encoding = b""
        self._decoder: _Decoder | None = None
        self._informational = False
        self._head_done = False
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
            self._decoder = _decoder(self._encoding)
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
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
        self._cancel_timer()
        self._wake()

    # --- driven by the pool and the Response --------------------------------------------------

    async def exchange(self, payload: bytes, head_deadline: float, deadline: float) -> Response:
        """Send one request and wait for its response head until `head_deadline` (loop time).
        The body must then arrive by `deadline`."""
        transport = self.transport
        assert transport is not None and self.state == ACTIVE
        self._new_message()
        self._in_flight = True
        self._deadline = deadline
        transport.write(payload)
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_at(head_deadline, self._head_timeout)
        try:
            await waiter
        except BaseException:  # cancelled: the response may still come, on a connection nobody reads
            self.close()
            raise
        finally:
            timer.cancel()
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
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._body_timeout)
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except BaseException:
                self.close()
                raise

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
        self._cancel_timer()
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

    def _head_timeout(self) -> None:
        if not self._head_done and self._error is None:
            self._error = TimeoutError()
            self._wake()
            self.close()

    def _body_timeout(self) -> None:
        self._timer = None
        if not self._complete and self._error is None:
            self._error = TimeoutError()
            self._wake()
            self.close()

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


class Response:
    """A response whose head has arrived. Read the body with `read()` or by iterating chunks,
    then `release()` it (also done when it is garbage-collected)."""

    __slots__ = ("_conn", "_headers", "_raw_headers", "_reason", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn
        self.status: int = conn.status
        self._raw_headers = conn.raw_headers
        self._reason = conn.reason
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:  # built on demand: the hot path never looks at them
            self._headers = Headers(self._raw_headers)
        return self._headers

    @property
    def reason(self) -> str:
        return self._reason.decode("latin-1").strip()

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read (reading stops above HIGH_WATER)."""
        return 0 if self._conn is None else self._conn.buffered

    @property
    def at_eof(self) -> bool:
        """True once the whole body has been returned (or the response was released)."""
        return self._conn is None or self._conn.body_done

    async def read_chunk(self) -> bytes:
        """The next body bytes, as they arrive; b"" at the end of the body."""
        if self._conn is None:
            raise RuntimeError("the response was released")
        return await self._conn.read_chunk()

    async def read(self) -> bytes:
        """The rest of the body."""
        if self._conn is None:
            raise RuntimeError("the response was released")
        read_chunk = self._conn.read_chunk
        parts = []
        while chunk := await read_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.release()

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            try:
                conn.release()
            except RuntimeError:  # the event loop is already closed
                pass


def _plain(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
