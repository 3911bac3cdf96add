"""An internal chunk stream (OpenAI chat chunks) as the Messages wire's event stream.

message_start (with a ping), then for each text run (a refusal's text is one, and the stop
reason is then refusal) or tool call a content_block_start,
its text_delta or input_json_delta events and a content_block_stop, then message_delta with
the stop reason and the usage (cumulative, cache reads and writes included), and message_stop.
Only the first choice is read: a Messages request cannot ask for more.

Invariants: block indexes count up from 0 with no gaps; every started block is stopped before
the next starts; a stream that fails, or ends without a finish reason (a cut upstream), ends
with an `error` event instead of message_delta/message_stop, so a client never takes a cut
answer for a whole one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from faregate.errors import FaregateError, UpstreamFailure
from faregate.types import JSON, Usage
from faregate.wire.anthropic_replies import (
    ERROR_TYPES,
    anthropic_usage,
    error_body,
    message_id,
    stop_reason_of,
    tool_use_id,
)
from faregate.wire.tool_calls import is_new_call
from faregate.wire.usage import GATEWAY_USAGE_FIELDS, usage_from


def sse_frame(event: JSON) -> bytes:
    """One event on the wire: its type as the SSE event name (the SDKs dispatch on it)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def error_event(error: FaregateError | UpstreamFailure) -> JSON:
    """The `error` event for a failure once the stream has started, typed as Anthropic types it
    (the SDKs raise RateLimitError, OverloadedError or InternalServerError by it)."""
    if isinstance(error, UpstreamFailure):
        return {"type": "error", "error": {"type": _stream_error_type(error), "message": error.detail}}
    return error_body(error)[1]


def _stream_error_type(failure: UpstreamFailure) -> str:
    """By what the upstream said: a rate limit rate_limit_error; an upstream error with its
    status as that status's type (503, 529 overloaded_error; a plain 500 api_error); one with no
    status (an upstream's own mid-stream overloaded event) overloaded_error; a broken stream
    (cut, stalled, unreadable) api_error."""
    if failure.kind == "rate_limited":
        return "rate_limit_error"
    if failure.kind == "server_error":
        if failure.status is None:
            return "overloaded_error"
        return ERROR_TYPES.get(failure.status, "api_error")
    return "api_error"


class _Blocks:
    """The open content block and the next index."""

    def __init__(self) -> None:
        self.next_index = 0
        self.open: str | None = None  # "text", or the chat tool call index as "tool:N"
        self.open_call_id: Any = None  # the upstream's id of the open tool call
        self.tool_used = False  # a tool_use block was started

    def start(self, key: str, block: JSON) -> list[JSON]:
        events = self.stop()
        self.open = key
        self.tool_used = self.tool_used or block["type"] == "tool_use"
        events.append({"type": "content_block_start", "index": self.next_index, "content_block": block})
        return events

    def stop(self) -> list[JSON]:
        if self.open is None:
            return []
        self.open = None
        self.next_index += 1
        return [{"type": "content_block_stop", "index": self.next_index - 1}]

    @property
    def index(self) -> int:
        return self.next_index


class MessagesStream:
    """Push-style translation: `feed` each internal chunk, then `end` (a clean finish) or `fail`
    (a failure after the stream started); each returns the events to send. The gateway's
    responder drives it chunk by chunk; `messages_events` wraps it for an async iterable."""

    __slots__ = (
        "_blocks",
        "_finish",
        "_input_tokens",
        "_model",
        "_refused",
        "_usage",
        "_usage_body",
        "started",
    )

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self._model = model
        self._input_tokens = input_tokens
        self._blocks = _Blocks()
        self._finish: tuple[str | None, str | None] = (None, None)
        self._usage: Usage | None = None
        self._usage_body: Any = None
        self._refused = False
        self.started = False

    def _start(self, chunk: JSON) -> list[JSON]:
        self.started = True
        message: JSON = {
            "id": message_id(chunk.get("id") or f"{time.time_ns():x}"),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: JSON) -> list[JSON]:
        events = [] if self.started else self._start(chunk)
        if chunk.get("usage"):
            self._usage = usage_from(chunk) or self._usage
            self._usage_body = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("refusal"):
                self._refused = True
            events += _delta_events(delta, self._blocks)
            if choice.get("finish_reason"):
                called = self._blocks.tool_used
                self._finish = stop_reason_of(choice, refused=self._refused, called=called)
        return events

    def end(self) -> list[JSON]:
        """The closing events: message_delta (stop reason, usage with the gateway's cost and
        baseline cost) and message_stop; an `error` event instead when no finish reason came (a
        cut stream)."""
        events = [] if self.started else self._start({})
        events += self._blocks.stop()
        if self._finish[0] is None:
            error = {"type": "api_error", "message": "the upstream stream ended early"}
            events.append({"type": "error", "error": error})
            return events
        final = anthropic_usage(self._usage or Usage(self._input_tokens, 0))
        del final["cache_creation"]  # message_delta's usage has no breakdown by TTL
        if isinstance(self._usage_body, dict):
            for extra in GATEWAY_USAGE_FIELDS:
                if extra in self._usage_body:
                    final[extra] = self._usage_body[extra]
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._finish[0], "stop_sequence": self._finish[1]},
                "usage": final,
            }
        )
        events.append({"type": "message_stop"})
        return events

    def fail(self, failure: FaregateError | UpstreamFailure) -> list[JSON]:
        """The open block stopped, then the `error` event (the SDKs raise on it)."""
        events = [] if self.started else self._start({})
        return events + self._blocks.stop() + [error_event(failure)]


async def messages_events(
    chunks: AsyncIterable[JSON], *, model: str, input_tokens: int = 0
) -> AsyncIterator[JSON]:
    """The Messages events for `chunks`. `input_tokens` goes in message_start (Anthropic knows it
    up front; the gateway may pass its count) and is replaced by the final usage's own."""
    stream = MessagesStream(model, input_tokens)
    try:
        async for chunk in chunks:
            for event in stream.feed(chunk):
                yield event
    except (FaregateError, UpstreamFailure) as failure:
        if not stream.started:
            raise  # nothing sent yet: the caller answers with a plain error response
        for event in stream.fail(failure):
            yield event
        return
    for event in stream.end():
        yield event


def _delta_events(delta: JSON, blocks: _Blocks) -> list[JSON]:
    events: list[JSON] = []
    text = delta.get("content") or delta.get("refusal")
    if isinstance(text, str) and text:
        if blocks.open != "text":
            events += blocks.start("text", {"type": "text", "text": ""})
        events.append(
            {
                "type": "content_block_delta",
                "index": blocks.index,
                "delta": {"type": "text_delta", "text": text},
            }
        )
    for call in delta.get("tool_calls") or ():
        key = f"tool:{call.get('index', 0)}"
        fn = call.get("function") or {}
        if blocks.open != key or is_new_call(call, blocks.open_call_id):
            blocks.open_call_id = call.get("id")
            block = {
                "type": "tool_use",
                "id": tool_use_id(call),
                "name": str(fn.get("name") or ""),
                "input": {},
            }
            events += blocks.start(key, block)
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(
                {
                    "type": "content_block_delta",
                    "index": blocks.index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }
            )
    return events
