"""A lean HTTP/1.1 server for the hot operations, on httptools; everything else goes to aiohttp.

aiohttp's server spends ~80 µs of CPU per request (bench/README.md, "CPU per non-streaming
request"); a bare httptools protocol ~20. The gateway's hot operations (the chat, Messages,
Responses and embeddings POSTs: `app[LEAN_ROUTES]`) need little of a general server: a head, a
body, a whole answer with its length or an event stream in chunks. So the listening socket's
protocol is `LeanConnection`: it parses every request with httptools, serves a hot one itself
through the HTTP seam (server/http_seam.py), and hands the connection to aiohttp's own protocol
at the first request that is anything else (another path, an upgrade, a head httptools refuses,
a body with a Content-Encoding, which aiohttp decodes, or one aiohttp refuses that httptools
takes: no Host in HTTP/1.1, a single field repeated, a field past aiohttp's size limits):
aiohttp's RequestHandler is given the transport and every byte from the start of that request,
and keeps the connection from then on (server/lean_server.py makes both).

How a connection reads, one request at a time:
- every message starts at the start of a `_feed` (its bytes are kept in `_raw`, for a hand-off
  and to find its end, up to a head and twice the body limit); a message that begins in the
  same read as the end of the previous one (pipelining) stops the parser, the boundary is found
  by parsing the first message again (`_split`: rare, so simple), and the rest waits in
  `_pending` until the answer is out (or, past a message too big to keep, is dropped and the
  connection closes after the answer);
- the handler starts when the head is complete (a 401 or 413 does not wait for the body); its
  `read()` waits for the body, sending `100 Continue` first if the client asked for it;
- a connection's requests run one after another in one task of its own (`_serve`), made at its
  first request and kept while the connection is open: a new asyncio Task per request (its
  registration in asyncio's weak set of tasks, its done callback) cost ~2 µs more than waking
  the waiting one (bench/README.md, "A reshaped hot path");
- an answer sent before the body was whole (a 401, a 413) is followed by reading the rest of
  the body into nothing for at most LINGER_S, as aiohttp does, so that the client reads the
  answer instead of a reset (also when the connection closes after it: HTTP/1.0, Connection:
  close);
- keep-alive as the request says (HTTP/1.0 included); an idle connection closes after
  KEEPALIVE_S: one timer per connection, not re-armed per request (it notes when the connection
  last became idle, and when it fires early it is armed again for the rest); a head or body
  that stops arriving for KEEPALIVE_S closes the connection too (else a client sending half a
  request would hold it, and its file descriptor, for ever);
- bytes that keep coming do not hold a connection either: a request not whole REQUEST_S after
  its message began is answered 408, and one whose message (head, body framing, trailers) grows
  past the head and twice the body limit is answered 413, though its body is within the limit
  (endless trailers or chunk extensions); the answer says `Connection: close`, the rest is
  read into nothing for at most LINGER_S and the connection closes;
- writes to a client that is gone raise ConnectionResetError, and a write waits while the
  transport's buffer is full (pause_writing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from faregate.errors import InternalError, PayloadTooLarge, RequestTimeout
from faregate.server.client_wires import wire_of_path
from faregate.server.http_seam import HttpRequest, Reply, Whole
from faregate.server.lean_head import response_head
from faregate.server.lean_request import LeanRequest

if TYPE_CHECKING:
    from faregate.server.lean_server import LeanServer

log = logging.getLogger("faregate.server")

LeanHandler = Callable[[HttpRequest], Awaitable[Reply]]

# As aiohttp's RequestHandler: an idle keep-alive connection is closed after this long, and the
# unread rest of a body answered early is read (and dropped) for at most this long.
KEEPALIVE_S: Final = 75.0
LINGER_S: Final = 10.0
# Bytes read past the request being handled (pipelined ones) before the socket stops being read.
HIGH_WATER: Final = 1 << 20
# llhttp does not bound a head: one still incomplete past this many bytes goes to aiohttp, whose
# line and field limits answer it (400), instead of growing here without end.
MAX_HEAD_BYTES: Final = 64 * 1024
# A request still arriving this long after its message began is answered 408: a body at the
# default 8 MiB limit needs ~28 kB/s. (Not less than KEEPALIVE_S: the idle timer checks it.)
REQUEST_S: Final = 300.0


class _HandOff(Exception):
    """Raised in a parser callback: this request is aiohttp's."""


class _NextMessage(Exception):
    """Raised in a parser callback: a pipelined message began in the read that ended the last."""


class _Probe:
    """Parses a message again to find where it ends (`LeanConnection._boundary`)."""

    complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def _ends_within(before: bytes, data: bytes, length: int) -> bool:
    probe = _Probe()
    parser = httptools.HttpRequestParser(probe)
    try:
        parser.feed_data(before + data[:length])
    except httptools.HttpParserError:
        pass
    return probe.complete


# What aiohttp refuses with a 400 that httptools takes: a request line or a field (name and value)
# past its limits (its defaults, which the gateway keeps), more fields than it takes, two of a field
# a request has at most one of, or an HTTP/1.1 request without Host (RFC 9112 3.2: a front proxy
# that routes by one Host and a server that serves by the other would disagree on where the
# request goes). llhttp checks Content-Length and Transfer-Encoding itself. Such a head is handed
# to aiohttp, which answers it as a gateway without the lean server does.
MAX_LINE_BYTES: Final = 8190
MAX_FIELD_BYTES: Final = 8190
MAX_FIELDS: Final = 128
_SINGLE_FIELDS: Final = frozenset(
    {b"host", b"content-type", b"content-location", b"content-range", b"etag", b"max-forwards",
     b"server", b"user-agent"}
)  # fmt: skip


def _for_aiohttp(url: bytes, headers: list[tuple[bytes, bytes]], version: str) -> bool:
    """Whether aiohttp would answer this head 400 (see above), or the body is encoded: aiohttp
    decodes a gzip or deflate body (`Content-Encoding`, which some HTTP clients send) within the
    body limit counted after decoding, and refuses one it cannot decode with a 400 that says so;
    the lean server reads bodies as they come, and a gzip body was a 400 "not valid JSON"."""
    if len(url) > MAX_LINE_BYTES or len(headers) > MAX_FIELDS:
        return True
    seen: set[bytes] = set()
    for name, value in headers:
        if len(name) + len(value) > MAX_FIELD_BYTES:
            return True
        lowered = name.lower()
        if lowered in _SINGLE_FIELDS:
            if lowered in seen:
                return True
            seen.add(lowered)
        elif lowered == b"content-encoding" and value.strip().lower() != b"identity":
            return True
    return b"host" not in seen and version == "1.1"


class LeanConnection(asyncio.Protocol):
    """One client connection while it is lean (see the module docstring)."""

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._parser = httptools.HttpRequestParser(self)
        self._raw: list[bytes] = []
        self._raw_size = 0
        self._raw_limit = MAX_HEAD_BYTES + 2 * server.max_body_bytes
        self._in_message = False
        self._completed_in_feed = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._request: LeanRequest | None = None  # the one being handled
        # The connection's task (`_serve`), the request it is to handle next, and what it awaits
        # when it has none.
        self._worker: asyncio.Task[None] | None = None
        self._job: tuple[LeanRequest, LeanHandler] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending = bytearray()
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._closing = False  # close once the request in hand is answered (shutdown)
        self._timer: asyncio.TimerHandle | None = None  # the linger timer
        self._keepalive: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        # When bytes last came (a head or body still arriving is cut off once they stop), and when
        # the message being read began (it must be whole within REQUEST_S).
        self._data_at = 0.0
        self._message_at = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.lean_connection_made(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        self._cancel_keepalive()
        self._wake_worker()
        self.server.lean_connection_lost(self)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))
        request = self._request
        if request is not None:
            request.lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._data_at = self.loop.time()
        request = self._request
        if (request is not None and request.body_complete) or self._pending:
            # Past the message being handled: parsed once it is answered.
            self._pending += data
            if len(self._pending) > HIGH_WATER and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._feed(data)

    # --- parsing ------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if not self._in_message:
            self._raw = []
            self._raw_size = 0
        self._raw_size += len(data)
        if self._raw_size > self._raw_limit and self._request is not None:
            # More than a message the lean path takes (a head, a body at the limit, its framing):
            # no longer kept. A body answered early (401, 413) is read into nothing for LINGER_S,
            # and a client could send gigabytes into it. `_split` then closes after the answer.
            self._raw = []
        else:
            self._raw.append(data)
        self._completed_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HandOff):
                self._hand_off()
            elif isinstance(cause, _NextMessage):
                self._split(data)
            else:
                raise
        except httptools.HttpParserUpgrade:
            self._hand_off()
        except httptools.HttpParserError as exc:
            request = self._request
            if request is None:
                self._hand_off()  # aiohttp answers a malformed request as it always did
            elif not request.body_complete:
                request.fail(str(exc).rstrip(".") or type(exc).__name__)
                request.keep_alive = False
            else:
                self._pending.clear()
                request.keep_alive = False
        request = self._request
        if request is None and self._in_message and self._raw_size > MAX_HEAD_BYTES:
            self._hand_off()
            return
        if (
            request is not None
            and self._raw_size > self._raw_limit
            and self._refusable(request)
            and not request.body_complete
        ):
            # Bytes that are not body (trailers, chunk extensions) are bounded by nothing else.
            log.info("answering 413 to a request whose message passed %d bytes", self._raw_limit)
            request.refuse(
                PayloadTooLarge(
                    f"The request (head, body framing, trailers) is larger than {self._raw_limit} bytes."
                )
            )
        if request is not None and request.lingering and request.body_complete:
            self._next()  # answered before the body was whole, which now is: go on

    @staticmethod
    def _refusable(request: LeanRequest) -> bool:
        """Whether the request is neither answered nor refused (so it may still be refused)."""
        return not request.responded and request.refused is None

    def _split(self, data: bytes) -> None:
        """A message began in `data` after the last one ended: keep it for later."""
        self._parser = httptools.HttpRequestParser(self)
        self._in_message = False
        if self._raw_size > self._raw_limit:
            # The message's bytes were not all kept (`_feed`), so where it ends in `data` is not
            # known: nothing after it is served; the connection closes once it is answered.
            self._closing = True
            request = self._request
            if request is not None and request.responded:
                self._cancel_timer()
                self._request = None
                if self.transport is not None:
                    self.transport.close()
            return
        before = b"".join(self._raw[:-1])
        low, high = 1, len(data)
        while low < high:  # the shortest prefix of `data` that completes the message
            middle = (low + high) // 2
            if _ends_within(before, data, middle):
                high = middle
            else:
                low = middle + 1
        self._pending += data[low:]

    def on_message_begin(self) -> None:
        if self._completed_in_feed:
            raise _NextMessage
        self._in_message = True
        self._message_at = self.loop.time()
        if self._keepalive is None:  # off while a request was handled: it bounds this one's arrival
            self._keepalive = self.loop.call_later(KEEPALIVE_S, self._idle_timeout)
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._request is None:  # else a trailer of a chunked body: not read, so not kept
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        path = self._url.partition(b"?")[0]
        handler = self.server.lean_routes.get((parser.get_method(), path))
        if (
            handler is None
            or parser.should_upgrade()
            or _for_aiohttp(self._url, self._headers, parser.get_http_version())
        ):
            raise _HandOff
        # Decoded as aiohttp decodes a header.
        headers = CIMultiDictProxy(
            CIMultiDict(
                [
                    (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                    for n, v in self._headers
                ]
            )
        )
        request = LeanRequest(
            self,
            parser.get_method().decode("ascii"),
            path.decode("ascii", "surrogateescape"),
            parser.get_http_version(),
            headers,
            parser.should_keep_alive(),
        )
        self._request = request
        self._job = (request, handler)
        if self._worker is None:
            self._worker = self.loop.create_task(self._serve())
            self.server.track(self._worker)
        else:
            self._wake_worker()

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is not None:
            request.feed(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed_in_feed = True
        request = self._request
        if request is not None:
            request.finish()

    # --- answering ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """The connection's requests, one after another, while it is lean and open."""
        try:
            while True:
                job = self._job
                if job is not None:
                    self._job = None
                    await self._handle(*job)
                    continue
                transport = self.transport
                if self.lost or self._closing or transport is None or transport.get_protocol() is not self:
                    return  # gone, closing, or aiohttp's now
                ready = self._ready = self.loop.create_future()
                try:
                    await ready
                finally:
                    self._ready = None
        finally:
            self._worker = None

    def _wake_worker(self) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    async def _handle(self, request: LeanRequest, handler: LeanHandler) -> None:
        try:
            reply = await handler(request)
        except Exception:
            # The pipelines answer every error themselves; this is a bug in between.
            log.exception("unhandled error on %s %s", request.method, request.path)
            error = InternalError("The gateway hit an internal error; it has been logged.")
            wire = wire_of_path(request.path)  # a Messages client reads only Anthropic's shape
            reply = Whole(wire.status(error), wire.error(error), {})
        try:
            if not request.responded and isinstance(reply, Whole):
                request.send_now(reply)
                if self._write_paused:
                    await self.drain()
            elif request.stream is not None and not request.stream.ended:
                request.keep_alive = False  # a stream left unfinished: its end is the close
        except (ConnectionError, ValueError) as exc:
            if isinstance(exc, ValueError):
                log.error("invalid response on %s %s: %s", request.method, request.path, exc)
            request.keep_alive = False
        self._answered(request)

    def _answered(self, request: LeanRequest) -> None:
        transport = self.transport
        if self.lost or transport is None:
            return
        if request.broken is not None:  # where its body ends is not known: nothing more is read
            self._request = None
            transport.close()
            return
        if not request.keep_alive or request.refused is not None:
            # Its answer said close: after the rest of the body is read into nothing (closed with
            # unread bytes, the socket is reset, and the client may lose the answer for it).
            self._closing = True
        if not request.body_complete:
            # Answered before the body was whole: read the rest into nothing, then go on.
            request.lingering = True
            self._timer = self.loop.call_later(LINGER_S, self._linger_timeout)
            return
        self._next()

    def _next(self) -> None:
        """The request in hand is answered and whole: on to the next (pipelined) one."""
        self._cancel_timer()
        self._request = None
        if self.lost or self.transport is None:
            return
        if self._closing:
            self.transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        pending = self._pending
        if pending:
            data = bytes(pending)
            pending.clear()
            self._feed(data)
        if self._request is None and not self.lost and self.transport.get_protocol() is self:
            self._idle()

    def _linger_timeout(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        self._idle_since = self.loop.time()
        if self._keepalive is None:
            self._keepalive = self.loop.call_at(self._idle_since + KEEPALIVE_S, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self._keepalive = None
        request = self._request
        if self.transport is None:
            return
        if self._in_message and (request is None or not request.body_complete):
            # A head or body on its way: cut off once nothing has come for KEEPALIVE_S, and not
            # let take longer than REQUEST_S in all (bytes that keep coming slowly, or for ever).
            now = self.loop.time()
            waiting = request is None or self._refusable(request)
            late = waiting and now >= self._message_at + REQUEST_S
            if late and request is not None:
                log.info("answering 408 to a request still arriving after %.0f s", REQUEST_S)
                request.refuse(
                    RequestTimeout(f"The request did not arrive in full within {REQUEST_S:.0f} s.")
                )
                waiting = False  # the answer closes the connection; still cut off if bytes stop
            left = self._data_at + KEEPALIVE_S - now
            if waiting:
                left = min(left, self._message_at + REQUEST_S - now)
            if left > 0:
                self._keepalive = self.loop.call_later(left, self._idle_timeout)
                return
            if late and request is None:  # a head: nothing to answer it
                log.info("closing a connection whose request head took longer than %.0f s", REQUEST_S)
            else:
                log.info("closing a connection whose request stopped arriving %.0f s ago", KEEPALIVE_S)
            self.transport.close()
            self._wake_worker()
            return
        if request is not None or self._in_message:
            return  # busy: `_idle` arms it again once the connection is idle
        left = self._idle_since + KEEPALIVE_S - self.loop.time()
        if left > 0:  # idle again since the timer was armed: wait for the rest
            self._keepalive = self.loop.call_later(left, self._idle_timeout)
            return
        self.transport.close()
        self._wake_worker()

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- writing ------------------------------------------------------------------------------

    def head(
        self,
        request: LeanRequest,
        status: int,
        headers: Mapping[str, str],
        content_type: str,
        length: int | None,
        chunked: bool,
    ) -> bytes:
        close = not request.keep_alive or self._closing
        if close:
            request.keep_alive = False
        # A refused request's connection closes too, once the rest is read into nothing (`_answered`).
        close = close or request.refused is not None
        return response_head(request.version, status, headers, content_type, length, chunked, close)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client closed the connection")
        if not self._write_paused:
            return
        drain = self._drain = self.loop.create_future()
        try:
            await drain
        finally:
            self._drain = None

    # --- hand-off and shutdown ----------------------------------------------------------------

    def _hand_off(self) -> None:
        """From the start of the current request on, the connection is aiohttp's."""
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        self._cancel_keepalive()
        self.server.lean_connection_lost(self)
        data = b"".join(self._raw) + bytes(self._pending)
        self._raw = []
        self._pending.clear()
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if data:
            protocol.data_received(data)
        self._wake_worker()

    def close_when_idle(self) -> None:
        """Shutdown: close now if idle, else once the request in hand is answered."""
        self._closing = True
        if self._request is None and not self._in_message and self.transport is not None:
            self.transport.close()
        self._wake_worker()
