"""Incremental server-sent-events reader: bytes in, `data` payloads out.

Follows the WHATWG event-stream parsing rules for the fields we use: lines end in
CRLF, LF or a lone CR; a line starting with ":" is a comment; "field: value" drops
one leading space from the value; several `data` lines of one event are joined
with "\\n"; a blank line dispatches the event; an event with no data is not
dispatched; an event cut off by the end of the stream is discarded. `event`, `id`
and `retry` are accepted and ignored: OpenAI-style chat streams carry everything
in `data`. Chunk boundaries may fall anywhere, including between CR and LF.

Payloads stay bytes: orjson parses bytes directly, so nothing is decoded twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

DONE = b"[DONE]"
_BOM = b"\xef\xbb\xbf"
# A line or event larger than this means a broken or hostile upstream, not a big answer.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEProtocolError(ValueError):
    """The stream cannot be an event stream (an unbounded line or event)."""


class SSEDecoder:
    """Feed it body chunks as they arrive; it returns the completed events' data payloads.

    After the `[DONE]` sentinel, `done` is true and further input is ignored.
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_pending",
        "_pending_size",
        "_skip_lf",
        "_started",
        "done",
        "max_bytes",
    )

    def __init__(self, *, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.done = False
        self._pending: list[bytes] = []  # an unterminated line, in pieces (joined once, not per chunk)
        self._pending_size = 0
        self._data: list[bytes] = []  # the data lines of the event being read
        self._data_size = 0
        self._skip_lf = False  # the previous chunk ended in CR: an LF starting this one belongs to it
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.done or not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if not self._started:
            # The BOM may itself arrive split; wait until three bytes are in hand to decide.
            head = b"".join((*self._pending, chunk))
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._pending = [head]
                self._pending_size = len(head)
                return []
            self._started = True
            self._pending = []
            self._pending_size = 0
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
            if not chunk:
                return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)
            self._pending_size += len(chunk)
            if self._pending_size + self._data_size > self.max_bytes:
                raise SSEProtocolError(f"event stream line longer than {self.max_bytes} bytes")
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        if b"\r" not in chunk:
            return self._feed_lf(chunk)
        # bytes.splitlines breaks on exactly the three SSE line endings (LF, CRLF, CR).
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] == b"\r":
            self._skip_lf = True
        elif last[-1:] != b"\n":
            self._pending.append(lines.pop())
            self._pending_size = len(last)
        out: list[bytes] = []
        for raw in lines:
            self._line(raw.rstrip(b"\r\n"), out)
            if self.done:
                return out
        if self._data_size > self.max_bytes:
            raise SSEProtocolError(f"event stream event larger than {self.max_bytes} bytes")
        return out

    def _feed_lf(self, chunk: bytes) -> list[bytes]:
        """`feed` for a chunk whose lines all end in LF (what every upstream sends): split into
        events at the blank lines, and an event that is one `data: ` line alone (every chunk of
        an OpenAI stream) is its payload without a pass over its lines; any other event goes
        through `_line`, one line at a time, as `feed` reads them."""
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()  # after the last blank line: the start of an event still coming
        out: list[bytes] = []
        for block in blocks:
            if not self._data and block[:6] == b"data: " and b"\n" not in block:
                payload = block[6:]
            else:
                for line in block.split(b"\n"):
                    self._line(line, out)
                    if self.done:
                        return out
                if not self._data:
                    continue
                payload = self._event()
            if payload == DONE or (len(payload) < 16 and payload.strip() == DONE):
                self.done = True
                self._pending = []
                return out
            out.append(payload)
        if rest:
            lines = rest.split(b"\n")
            last = lines.pop()  # b"" when `rest` ends in LF
            for line in lines:
                self._line(line, out)
                if self.done:
                    return out
            if last:
                self._pending.append(last)
                self._pending_size = len(last)
        if self._data_size > self.max_bytes:
            raise SSEProtocolError(f"event stream event larger than {self.max_bytes} bytes")
        return out

    def _event(self) -> bytes:
        """The data lines gathered so far as one event's payload; the next event starts empty."""
        payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._data_size = 0
        return payload

    def _line(self, line: bytes, out: list[bytes]) -> None:
        """One line (its ending removed), as the loop of `feed` reads it."""
        if line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._data.append(value)
            self._data_size += len(value) + 1
        elif not line:
            if self._data:
                payload = self._event()
                if payload == DONE or (len(payload) < 16 and payload.strip() == DONE):
                    self.done = True
                    self._pending = []
                    return
                out.append(payload)
        elif line == b"data":  # a field name alone means an empty value
            self._data.append(b"")
            self._data_size += 1
        # A comment (":") or any other field (event, id, retry, unknown) adds no data.


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the data payload of each event in `chunks` (e.g. `response.content.iter_any()`),
    stopping at `[DONE]` or at the end of the body."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for payload in decoder.feed(chunk):
            yield payload
        if decoder.done:
            return
