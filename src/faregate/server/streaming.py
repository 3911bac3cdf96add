"""Relay an upstream stream to the client as OpenAI-framed SSE.

The attempt loop has already held back the start of the stream until the first
real content, so everything here happens after the client has seen text. From
then on a failure cannot be hidden: the stream ends with an OpenAI-style error
event (which the SDKs raise), never with a clean `[DONE]`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from faregate.errors import UpstreamFailure
from faregate.routing.attempts import OpenedStream, chunk_finish_reason
from faregate.types import JSON, ChatRequest, Usage

DONE = b"data: [DONE]\n\n"


def sse_frame(payload: JSON) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(message: str, code: str) -> bytes:
    return sse_frame({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}})


@dataclass(slots=True)
class StreamOutcome:
    usage: Usage | None = None
    finish_reason: str | None = None
    text: list[str] = field(default_factory=list)
    usage_chunk: JSON | None = None
    first_content_at: float | None = None
    failure: UpstreamFailure | None = None
    client_gone: bool = False
    chunks: int = 0
    tool_calls: bool = False


def _collect_text(chunk: JSON, outcome: StreamOutcome) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            outcome.text.append(content)
        for call in delta.get("tool_calls") or ():
            outcome.tool_calls = True
            fn = call.get("function") or {}
            outcome.text.append(str(fn.get("name") or ""))
            outcome.text.append(str(fn.get("arguments") or ""))


def _usage_of(chunk: JSON) -> Usage | None:
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return Usage(prompt, completion)
    return None


async def relay(
    http_request: web.Request,
    response: web.StreamResponse,
    request: ChatRequest,
    opened: OpenedStream,
    model_name: str,
) -> StreamOutcome:
    """Write every chunk to the client; returns what was seen. The caller appends the usage
    chunk (with cost) and `[DONE]`, or the error event, since only it knows the cost."""
    outcome = StreamOutcome()

    async def emit(chunk: JSON) -> None:
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamFailure("server_error", f"upstream sent an error event: {message}")
        chunk["model"] = model_name
        usage = _usage_of(chunk)
        if usage is not None:
            outcome.usage = usage
        if not chunk.get("choices") and "usage" in chunk:
            # The trailing usage-only chunk: held back until the cost is known.
            outcome.usage_chunk = chunk
            return
        if not request.include_usage:
            chunk.pop("usage", None)
        _collect_text(chunk, outcome)
        reason = chunk_finish_reason(chunk)
        if reason:
            outcome.finish_reason = reason
        await response.write(sse_frame(chunk))
        outcome.chunks += 1
        if outcome.first_content_at is None:
            outcome.first_content_at = time.perf_counter()

    try:
        for chunk in opened.buffered:
            await emit(chunk)
        async for chunk in opened.rest:
            await emit(chunk)
    except UpstreamFailure as failure:
        outcome.failure = failure
    except (ConnectionResetError, ConnectionError):
        outcome.client_gone = True
    finally:
        closer = getattr(opened.rest, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                pass
    if outcome.failure is None and not outcome.client_gone and outcome.finish_reason is None:
        outcome.failure = UpstreamFailure("truncated", "stream ended without a finish_reason")
    return outcome
