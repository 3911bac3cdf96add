"""A response whose head has arrived: its status and headers, its body read as it comes.

The Response holds its connection only until it is released (or collected: `__del__` releases
it, so a response its caller drops never leaks a half-read connection); all per-message state
lives on the Connection (providers/transport.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faregate.providers.http_framing import Headers

if TYPE_CHECKING:
    from faregate.providers.transport import Connection


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

    def whole_body(self) -> bytes | None:
        """The rest of the body if it has all arrived (`read` without a wait); None: `read` it."""
        if self._conn is None:
            raise RuntimeError("the response was released")
        return self._conn.whole_body()

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
