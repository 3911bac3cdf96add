"""An internal chunk stream (OpenAI chat chunks) as the Responses API's typed event stream.

response.created and response.in_progress; for the text, response.output_item.added (a
message), response.content_part.added, response.output_text.delta events, then
response.output_text.done, response.content_part.done and response.output_item.done (for a
refusal the same with a refusal part and response.refusal.delta/.done events); for each
tool call, response.output_item.added (a function_call), response.function_call_arguments.delta
events, then .done and response.output_item.done; last response.completed (or
response.incomplete when the answer was cut at max_output_tokens) with the whole Response and
its usage. Only the first choice is read.

Invariants: sequence_number counts up from 0 with no gaps; every item added is done before the
next is added and before the end; a stream that fails or ends without a finish reason ends with
response.failed (status failed, error set) instead of response.completed.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from faregate.errors import FaregateError, UpstreamFailure
from faregate.types import JSON
from faregate.wire.responses import (
    base_response,
    finish_status,
    function_call_item,
    message_item,
    response_id,
    responses_usage,
)
from faregate.wire.tool_calls import NO_ARGUMENTS, is_new_call


def sse_frame(event: JSON) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class _Writer:
    """Numbers the events and keeps the output items as they are built."""

    def __init__(self, response: JSON) -> None:
        self.response = response
        self.sequence = 0
        self.output: list[JSON] = []
        self.open: str | None = None  # "text", "refusal" or "tool:N"
        self.open_call_id: Any = None  # the upstream's id of the open tool call
        self.text: list[str] = []

    def event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(self, **changes: Any) -> JSON:
        return {**self.response, "output": list(self.output), **changes}

    def open_item(self, key: str, item: JSON) -> list[JSON]:
        events = self.close_item()
        self.open = key
        self.output.append(item)
        events.append(
            self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))
        )
        if item["type"] == "message":
            part = message_item(item["id"], "", refusal=key == "refusal")["content"][0]
            events.append(
                self.event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    content_index=0,
                    part=part,
                )
            )
        return events

    def arguments_delta(self, index: int, arguments: str) -> JSON:
        """More arguments for the function call at `index`: kept on its item, and their event."""
        item = self.output[index]
        item["arguments"] += arguments
        return self.event(
            "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=arguments
        )

    def close_item(self) -> list[JSON]:
        if self.open is None:
            return []
        index = len(self.output) - 1
        item = self.output[index]
        events: list[JSON] = []
        if item["type"] == "message":
            refusal = self.open == "refusal"
            text = "".join(self.text)
            self.text = []
            done = message_item(item["id"], text, refusal=refusal)
            said: JSON = {"refusal": text} if refusal else {"text": text, "logprobs": []}
            events.append(
                self.event(
                    "response.refusal.done" if refusal else "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    **said,
                )
            )
            events.append(
                self.event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=done["content"][0],
                )
            )
        else:
            if not item["arguments"]:
                # No arguments streamed: "{}" (as a whole answer says), in a delta too, so the
                # deltas a client adds up come to the arguments done says.
                events.append(self.arguments_delta(index, NO_ARGUMENTS))
            done = {**item, "status": "completed"}
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
        self.open = None
        self.output[index] = done
        events.append(self.event("response.output_item.done", output_index=index, item=done))
        return events


class ResponsesStream:
    """Push-style translation: `feed` each internal chunk, then `end` (a clean finish) or `fail`
    (a failure after the stream started); each returns the events to send. The gateway's
    responder drives it chunk by chunk; `response_events` wraps it for an async iterable."""

    __slots__ = ("_finish", "_model", "_request", "_usage_body", "writer")

    def __init__(self, model: str, request: JSON | None = None) -> None:
        self._model = model
        self._request = request
        self._finish: Any = None
        self._usage_body: Any = None
        self.writer: _Writer | None = None

    @property
    def started(self) -> bool:
        return self.writer is not None

    def _start(self, chunk: JSON) -> tuple[_Writer, list[JSON]]:
        rid = response_id(chunk.get("id"))
        response = base_response(rid, self._model, self._request, chunk.get("created"))
        writer = self.writer = _Writer(response)
        return writer, [
            writer.event("response.created", response=writer.snapshot()),
            writer.event("response.in_progress", response=writer.snapshot()),
        ]

    def _writer(self, chunk: JSON) -> tuple[_Writer, list[JSON]]:
        return (self.writer, []) if self.writer is not None else self._start(chunk)

    def feed(self, chunk: JSON) -> list[JSON]:
        writer, events = self._writer(chunk)
        if chunk.get("usage"):
            self._usage_body = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            events += _delta_events(writer, choice.get("delta") or {})
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def end(self) -> list[JSON]:
        """response.completed (or .incomplete) with the whole Response and its usage (the
        gateway's cost included); response.failed when no finish reason came (a cut stream)."""
        writer, events = self._writer({})
        if self._finish is None:
            return events + _failed(writer, "the upstream stream ended early")
        events += writer.close_item()
        status, incomplete = finish_status(self._finish)
        final = writer.snapshot(
            status=status, incomplete_details=incomplete, usage=responses_usage(self._usage_body)
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*events, writer.event(kind, response=final)]

    def fail(self, failure: FaregateError | UpstreamFailure) -> list[JSON]:
        writer, events = self._writer({})
        message = failure.message if isinstance(failure, FaregateError) else failure.detail
        return events + _failed(writer, message)


async def response_events(
    chunks: AsyncIterable[JSON], *, model: str, request: JSON | None = None
) -> AsyncIterator[JSON]:
    """The Responses events for `chunks`, answering `request` (whose settings are echoed)."""
    stream = ResponsesStream(model, request)
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


def _failed(writer: _Writer, message: str) -> list[JSON]:
    error = {"code": "server_error", "message": message}
    return [writer.event("response.failed", response=writer.snapshot(status="failed", error=error))]


def _delta_events(writer: _Writer, delta: JSON) -> list[JSON]:
    events: list[JSON] = []
    suffix = writer.response["id"].removeprefix("resp_")
    for key, text in (("text", delta.get("content")), ("refusal", delta.get("refusal"))):
        if not (isinstance(text, str) and text):
            continue
        if writer.open != key:
            # A later message item (text after a tool call, a refusal after text) needs an id
            # of its own: the SDK's stream helper refuses two items with one id.
            n = len(writer.output)
            new_id = f"msg_{suffix}_{n}" if n else f"msg_{suffix}"
            events += writer.open_item(key, message_item(new_id, "", "in_progress") | {"content": []})
        writer.text.append(text)
        index = len(writer.output) - 1
        item_id = writer.output[index]["id"]
        said: JSON = {"logprobs": []} if key == "text" else {}
        kind = "response.output_text.delta" if key == "text" else "response.refusal.delta"
        events.append(
            writer.event(kind, item_id=item_id, output_index=index, content_index=0, delta=text, **said)
        )
    for call in delta.get("tool_calls") or ():
        key = f"tool:{call.get('index', 0)}"
        if writer.open != key or is_new_call(call, writer.open_call_id):
            writer.open_call_id = call.get("id")
            # Added with no arguments yet (""), as OpenAI's stream adds a call: its deltas follow.
            item = function_call_item(f"fc_{suffix}_{len(writer.output)}", call, "in_progress")
            item["arguments"] = ""
            events += writer.open_item(key, item)
        arguments = (call.get("function") or {}).get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(writer.arguments_delta(len(writer.output) - 1, arguments))
    return events
