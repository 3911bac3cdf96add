"""aiohttp's side of the HTTP seam (server/http_seam.py): a web.Request read, and a Reply
written, the way the routes always did."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import HttpVersion11, web

from faregate.errors import PayloadTooLarge
from faregate.server.http_seam import EVENT_STREAM_TYPE, EventStream, HttpRequest, Reply, Whole

SeamHandler = Callable[[HttpRequest], Awaitable[Reply]]
WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def web_response(whole: Whole) -> web.Response:
    return web.Response(
        status=whole.status, body=whole.body, content_type=whole.content_type, headers=whole.headers
    )


class AiohttpRequest:
    """An aiohttp request seen through the seam; `response` is what was written, if anything."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def content_length(self) -> int | None:
        return self.request.content_length

    async def read(self) -> bytes:
        try:
            return await self.request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"Request body is larger than the limit of {self.request.client_max_size - 1} bytes."
            ) from None

    def body_if_whole(self) -> bytes | None:
        return None  # aiohttp reads it: `read`

    async def open_stream(self, headers: Mapping[str, str]) -> EventStream:
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = EVENT_STREAM_TYPE
        if self.request.version < HttpVersion11:
            # HTTP/1.0 has no chunks: the stream's end is the connection's close. aiohttp sends it
            # so, but keeps the connection open after when the client asked for keep-alive, and
            # that client never learns the stream ended.
            response.force_close()
        self.response = response
        await response.prepare(self.request)
        return response

    async def send(self, whole: Whole) -> None:
        if self.response is not None:
            return
        response = self.response = web_response(whole)
        await response.prepare(self.request)
        await response.write_eof()

    def gone(self) -> asyncio.Future[None] | None:
        return None  # aiohttp tells a handler only by cancelling it (handler_cancellation, off)

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()  # close() would wait for the unsent bytes to be read

    def written(self, reply: Reply) -> web.StreamResponse:
        """The aiohttp response for `reply` (the one already written, if any)."""
        if self.response is not None:
            return self.response
        assert isinstance(reply, Whole), "a stream is opened through open_stream"
        return web_response(reply)


def web_handler(handle: SeamHandler) -> WebHandler:
    """An aiohttp route handler for a seam handler."""

    async def handler(request: web.Request) -> web.StreamResponse:
        http = AiohttpRequest(request)
        return http.written(await handle(http))

    return handler
