"""An internal chunk stream (OpenAI chat chunks) as the Messages wire's event stream.

message_start (with a ping), then for each text run or tool call a content_block_start,
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
from faregate.wire.anthropic_replies import anthropic_usage, error_body, message_id, stop_reason_of
from faregate.wire.usage import usage_from


def sse_frame(event: JSON) -> bytes:
    """One event on the wire: its type as the SSE event name (the SDKs dispatch on it)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def error_event(error: FaregateError | UpstreamFailure) -> JSON:
    """The `error` event for a failure once the stream has started (a 529-like overload for
    upstream failures, since the client may retry them)."""
    if isinstance(error, UpstreamFailure):
        kind = "overloaded_error" if error.kind in ("rate_limited", "server_error") else "api_error"
        return {"type": "error", "error": {"type": kind, "message": error.detail}}
    return error_body(error)[1]


class _Blocks:
    """The open content block and the next index."""

    def __init__(self) -> None:
        self.next_index = 0
        self.open: str | None = None  # "text", or the chat tool call index as "tool:N"

    def start(self, key: str, block: JSON) -> list[JSON]:
        events = self.stop()
        self.open = key
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


async def messages_events(
    chunks: AsyncIterable[JSON], *, model: str, input_tokens: int = 0
) -> AsyncIterator[JSON]:
    """The Messages events for `chunks`. `input_tokens` goes in message_start (Anthropic knows it
    up front; the gateway may pass its count) and is replaced by the final usage's own."""
    blocks = _Blocks()
    started = False
    finish: tuple[str | None, str | None] = (None, None)
    usage: Usage | None = None
    usage_body: Any = None

    def start(chunk: JSON) -> JSON:
        message: JSON = {
            "id": message_id(chunk.get("id") or f"{time.time_ns():x}"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        return {"type": "message_start", "message": message}

    try:
        async for chunk in chunks:
            if not started:
                started = True
                yield start(chunk)
                yield {"type": "ping"}
            if chunk.get("usage"):
                usage = usage_from(chunk) or usage
                usage_body = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                for event in _delta_events(choice.get("delta") or {}, blocks):
                    yield event
                if choice.get("finish_reason"):
                    finish = stop_reason_of(choice)
    except (FaregateError, UpstreamFailure) as failure:
        if not started:
            raise  # nothing sent yet: the caller answers with a plain error response
        for event in blocks.stop():
            yield event
        yield error_event(failure)
        return
    if not started:
        yield start({})
    for event in blocks.stop():
        yield event
    if finish[0] is None:
        yield {"type": "error", "error": {"type": "api_error", "message": "the upstream stream ended early"}}
        return
    final = anthropic_usage(usage or Usage(input_tokens, 0))
    del final["cache_creation"]  # message_delta's usage has no breakdown by TTL
    if isinstance(usage_body, dict):
        for extra in ("cost", "estimated"):
            if extra in usage_body:
                final[extra] = usage_body[extra]
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": finish[0], "stop_sequence": finish[1]},
        "usage": final,
    }
    yield {"type": "message_stop"}


def _delta_events(delta: JSON, blocks: _Blocks) -> list[JSON]:
    events: list[JSON] = []
    text = delta.get("content")
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
        if blocks.open != key:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
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
