"""The seam between the request path and the HTTP server that carries it.

The pipelines (chat, Messages, Responses, embeddings) read a request and write an answer through
these types only, so that two servers can carry them: aiohttp (`server/aiohttp_seam.py`, every
route) and the lean httptools server of the hot operations (`server/lean_http.py`,
`server.lean_http`). What a pipeline needs of a request is small: its headers, its declared
length, its body; and of a response: a whole answer (`Whole`, written by the server once the
handler returns, or at once by `send`) or an event stream (`open_stream`, then `write` each
piece and `write_eof`).

Invariants: `read` raises PayloadTooLarge rather than buffer a body past the server's limit;
writing to a client that is gone raises ConnectionError (ConnectionResetError), as aiohttp does;
`send` writes a Whole at most once, and a server never writes a reply after `send` or
`open_stream` did; `abort` ends a write that waits for a client that does not read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

JSON_TYPE = "application/json"
EVENT_STREAM_TYPE = "text/event-stream"


@dataclass(slots=True)
class Whole:
    """A whole answer: status, body and headers (Content-Type from `content_type`)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    content_type: str = JSON_TYPE


class EventStream(Protocol):
    """A response whose head is sent and whose body is written piece by piece."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None:
        """End the body, `data` its last piece (sent with the end: one system call, not two)."""
        ...


class HttpRequest(Protocol):
    """One HTTP request as the pipelines read it, and the way its answer leaves."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    @property
    def content_length(self) -> int | None: ...

    async def read(self) -> bytes:
        """The whole body (PayloadTooLarge past the server's limit)."""
        ...

    def body_if_whole(self) -> bytes | None:
        """The whole body if it has all arrived, within the server's limit, without waiting;
        None: `read` it (it may have to wait, or raise)."""
        ...

    async def open_stream(self, headers: Mapping[str, str]) -> EventStream:
        """Send a 200 `text/event-stream` head with `headers`; ConnectionError if the client is gone."""
        ...

    async def send(self, whole: Whole) -> None:
        """Write `whole` now rather than after the handler returns; ConnectionError if the
        client is gone."""
        ...

    def gone(self) -> asyncio.Future[None] | None:
        """A future done once the client's connection is lost, or None when the server does not
        say (aiohttp's, whose handlers learn it only at a write)."""
        ...

    def abort(self) -> None:
        """Drop the connection now, with whatever is still unsent (a stream its client stopped
        reading): a write waiting for room raises ConnectionError."""
        ...


# What a handler returns: a Whole to write (unless `send` already did), or the stream it wrote.
Reply = Whole | EventStream
