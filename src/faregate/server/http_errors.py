"""aiohttp's own error answers in the OpenAI error format.

aiohttp answers what never reaches the app itself - bytes that are not HTTP, a head its parser
refuses, a handler that timed out or raised past the middlewares - with a text/plain page
("400, message: Invalid method encountered..."). The gateway's clients read errors as OpenAI
error JSON, so the handler of every aiohttp connection (`ErrorsInOpenAIFormat`) answers them with
the same status as JSON instead (Anthropic's error shape under /v1/messages, as the middleware).
It serves the connections aiohttp carries from their start and those the lean server hands over
(server/lean_http.py: a head httptools refuses, the garbage after a pipelined request), so both
servers answer the same bytes alike (tests/test_e2e_lean_differential.py).

A head the parser refuses is logged as one line saying what was wrong and from where, not with
aiohttp's traceback: that quoted the offending header line, and when it was the Authorization
header (a key read from a file with a stray byte), the client's key went to the log.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from faregate.errors import FaregateError, InternalError, InvalidRequest
from faregate.server.client_wires import wire_of_path

# What some complaints quote of the request after a colon (a field past the limit, a bad header):
# left out of the log line.
_QUOTED = re.compile(r":\s*b?['\"].*$")


class ErrorsInOpenAIFormat(RequestHandler):
    """aiohttp's RequestHandler, its error answers as OpenAI error JSON (module docstring)."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiohttp's C parser, refusing a read in the middle of a body (a chunk size that is not
        # hex), queues a 400 for after the request and forgets the body without telling it: the
        # handler reading it waited for ever (the pure-Python parser tells it). Told here, as the
        # lean server says it; the queued 400 is dropped (the request's own answer says it) and
        # the connection closes after that answer, its stream past repair: the answer says
        # `Connection: close`, as the lean server's does.
        if not self._messages or not isinstance(self._messages[-1][0], _ErrInfo):
            return
        current = self._current_request
        bodies = [payload for _, payload in self._messages]
        bodies += [current.content] if current is not None else []
        unfinished = [body for body in bodies if not body.is_eof()]
        if not unfinished:
            return  # a bad head: aiohttp's 400 answers it
        error_info = self._messages.pop()[0]
        assert isinstance(error_info, _ErrInfo)
        said = error_info.message.strip().splitlines()
        detail = said[0].rstrip(":. ") if said else "bad chunk"
        for body in unfinished:
            body.set_exception(InvalidRequest(f"Malformed request body: {detail}.", code="invalid_body"))
            body.feed_eof()  # not read on after the answer (aiohttp's lingering read): it will not end
        # The answers say so: an answer's Connection header follows its request's keep-alive
        # (StreamResponse.prepare), read off the request's head.
        if current is not None and current.content in unfinished:
            current._message = current._message._replace(should_close=True)
        for i, (message, body) in enumerate(self._messages):
            if body in unfinished and not isinstance(message, _ErrInfo):
                self._messages[i] = (message._replace(should_close=True), body)
        self.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's message: the parser's complaint, then the offending bytes under a caret.
        said = (message or "").strip().splitlines()
        detail = said[0].rstrip(":.") if said else "bad request"  # the sentence's full stop is ours
        if status < 500 and isinstance(exc, HttpProcessingError):
            # Logged as aiohttp would (non-HTTP bytes at debug level), without the bytes.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.ERROR
            said_alone = _QUOTED.sub("", detail)
            self.logger.log(level, "a request from %s is not valid HTTP: %s", request.remote, said_alone)
            if request.writer.output_size > 0:
                raise ConnectionError("an answer was under way: the connection is broken")
        else:
            # aiohttp's: logs, and raises if an answer was already under way (the connection is broken).
            super().handle_error(request, status, exc, message)
        error: FaregateError
        if status < 500:
            error = InvalidRequest(f"The request is not valid HTTP: {detail}.")
        else:
            error = InternalError("The gateway hit an internal error; it has been logged.")
        # In the wire of the path (Anthropic's shape under /v1/messages): the runner's fast routes
        # skip the middlewares, so a bug past the pipeline there is answered here.
        body = wire_of_path(request.path).error(error)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


class OpenAIErrorsServer(web.Server):
    """aiohttp's web.Server whose connections' handlers are `ErrorsInOpenAIFormat`."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        # The same object layout (no slots added): only handle_error differs.
        handler.__class__ = ErrorsInOpenAIFormat
        return handler


def errors_in_openai_format(server: web.Server) -> web.Server:
    """`server` (the AppRunner's), its connections answering errors as OpenAI JSON."""
    server.__class__ = OpenAIErrorsServer
    return server
