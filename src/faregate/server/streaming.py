"""Relay an upstream stream to the client as OpenAI-framed SSE.

The attempt loop has already held back the start of the stream until the first
real content, so everything here happens after the client has seen text. From
then on a failure cannot be hidden: the stream ends with an OpenAI-style error
event (which the SDKs raise), never with a clean `[DONE]`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from faregate.errors import UpstreamFailure
from faregate.routing.opened_stream import OpenedStream
from faregate.types import ChatRequest
from faregate.wire.openai import relay_frame


@dataclass(slots=True)
class StreamOutcome:
    """How the relay went; what the stream carried is `OpenedStream.seen`."""

    first_content_at: float | None = None
    failure: UpstreamFailure | None = None
    client_gone: bool = False
    chunks: int = 0


async def relay(response: web.StreamResponse, request: ChatRequest, opened: OpenedStream) -> StreamOutcome:
    """Write every chunk to the client. The caller appends the usage chunk (with the cost) and
    `[DONE]`, or the error event, since only it knows the cost. How the upstream stream ended
    (a failure, a missing finish reason) is the OpenedStream's to judge."""
    outcome = StreamOutcome()
    model = opened.candidate.model.name
    try:
        async for chunk in opened:
            await response.write(relay_frame(chunk, model, request.include_usage))
            outcome.chunks += 1
            if outcome.first_content_at is None:
                outcome.first_content_at = time.perf_counter()
    except UpstreamFailure as failure:
        outcome.failure = failure
    except (ConnectionResetError, ConnectionError):
        outcome.client_gone = True
    finally:
        await opened.aclose()
    return outcome
