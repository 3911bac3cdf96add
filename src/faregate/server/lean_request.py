"""A request and its answer on the lean path (server/lean_http.py parses; this is what the
pipeline reads and writes through the HTTP seam): the body as it arrives, within the size limit,
`100 Continue` when the client asked and the body is first read; a whole answer with its length,
or an event stream in chunks (HTTP/1.1) or up to the close (HTTP/1.0)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy

from faregate.errors import FaregateError, InvalidRequest, PayloadTooLarge
from faregate.server.http_seam import EVENT_STREAM_TYPE, EventStream, Whole

if TYPE_CHECKING:
    from faregate.server.lean_http import LeanConnection

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class LeanRequest:
    """One request on the lean path (implements server.http_seam.HttpRequest)."""

    __slots__ = (
        "_body",
        "_complete",
        "_conn",
        "_continue",
        "_gone",
        "_size",
        "_too_large",
        "_waiter",
        "broken",
        "headers",
        "keep_alive",
        "lingering",
        "method",
        "path",
        "refused",
        "responded",
        "stream",
        "version",
    )

    def __init__(
        self,
        conn: LeanConnection,
        method: str,
        path: str,
        version: str,
        headers: CIMultiDictProxy[str],
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.path = path
        self.version = version
        self.headers: Mapping[str, str] = headers
        self.keep_alive = keep_alive
        self._continue = version == "1.1" and headers.get("Expect", "").lower() == "100-continue"
        self._body: list[bytes] = []
        self._size = 0
        self._complete = False
        self._too_large = False
        self.broken: str | None = None  # the body's framing was invalid
        # The message came too slowly or grew too long (`LeanConnection`): `read` raises this, and
        # the connection closes after the answer.
        self.refused: FaregateError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # made when asked for (`gone`)
        self.responded = False
        self.lingering = False  # answered; the rest of the body is read into nothing
        self.stream: LeanStream | None = None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None else None  # llhttp has checked it is digits

    @property
    def body_complete(self) -> bool:
        return self._complete

    # -- fed by the connection ------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._too_large or self.lingering:
            return
        if self._size > self._conn.server.max_body_bytes + 1:
            self._too_large = True
            self._body = []
        else:
            self._body.append(chunk)
        self._wake()

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, problem: str) -> None:
        self.broken = problem
        self._wake()

    def refuse(self, error: FaregateError) -> None:
        self.refused = error
        self._wake()

    def lost(self) -> None:
        """The connection is lost (LeanConnection.connection_lost)."""
        gone = self._gone
        if gone is not None and not gone.done():
            gone.set_result(None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the seam ------------------------------------------------------------------------------

    async def read(self) -> bytes:
        conn = self._conn
        if self._continue:
            self._continue = False
            if not self._complete and not self._size:
                conn.write(_CONTINUE)
        while not self._complete:
            if self.refused is not None:
                raise self.refused
            if self._too_large:
                break
            if self.broken is not None:
                raise InvalidRequest(f"Malformed request body: {self.broken}.", code="invalid_body")
            if conn.lost:
                raise ConnectionResetError("the client closed the connection before sending its body")
            self._waiter = conn.loop.create_future()
            await self._waiter
            self._waiter = None
        if self._too_large:
            raise PayloadTooLarge(
                f"Request body is larger than the limit of {conn.server.max_body_bytes} bytes."
            )
        return self._joined()

    def body_if_whole(self) -> bytes | None:
        if not self._complete or self._too_large or self.broken is not None:
            return None
        self._continue = False  # all of it came: nothing to continue
        return self._joined()

    def _joined(self) -> bytes:
        body = self._body
        return body[0] if len(body) == 1 else b"".join(body)

    async def open_stream(self, headers: Mapping[str, str]) -> EventStream:
        if self.responded:
            raise RuntimeError("a response was already sent")
        self.responded = True
        conn = self._conn
        chunked = self.version == "1.1"
        if not chunked:
            self.keep_alive = False  # an HTTP/1.0 stream ends when the connection does
        head = conn.head(self, 200, headers, EVENT_STREAM_TYPE, None, chunked)
        conn.write(head)
        self.stream = LeanStream(conn, chunked)
        return self.stream

    async def send(self, whole: Whole) -> None:
        if self.responded:
            return
        self.send_now(whole)
        await self._conn.drain()

    def send_now(self, whole: Whole) -> None:
        """`send` without waiting for a full write buffer to drain (the caller's to do)."""
        if self.responded:
            return
        self.responded = True
        conn = self._conn
        body = whole.body
        conn.write(conn.head(self, whole.status, whole.headers, whole.content_type, len(body), False) + body)

    def gone(self) -> asyncio.Future[None] | None:
        if self._gone is None:
            self._gone = self._conn.loop.create_future()
            if self._conn.lost:
                self._gone.set_result(None)
        return self._gone

    def abort(self) -> None:
        self.keep_alive = False
        transport = self._conn.transport
        if transport is not None and not self._conn.lost:
            transport.abort()  # close() would wait for the unsent bytes to be read


class LeanStream:
    """An event stream's body on the lean path: chunked (HTTP/1.1) or up to the close (1.0)."""

    __slots__ = ("_chunked", "_conn", "ended")

    def __init__(self, conn: LeanConnection, chunked: bool) -> None:
        self._conn = conn
        self._chunked = chunked
        self.ended = False

    async def write(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end the body
        conn = self._conn
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self.ended:
            return
        self.ended = True
        if self._chunked:
            self._conn.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
        elif data:
            self._conn.write(data)
        await self._conn.drain()
