"""The simulator's answers on the other wires (Messages, Responses), by translation.

A request on another wire is translated to the chat body (faregate.wire), scripted exactly as
a chat request is (Simulator.scripted, answers.scripted_reply), and the chat answer it would
get - a whole completion, or its chunks - is translated back with the gateway's own wire
modules. So every wire has the same behaviours and faults, usage counted the same way, and
the SDK contract tests of the wire modules cover the simulator's output too.

Streams keep their pacing: the translated events are grouped by the chunk they came from, and
the groups are sent on the chunk schedule (the first token at ttft, one token per gap after).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from aiohttp import web

from faregate.sim import delivery, wire
from faregate.sim.answers import Reply
from faregate.sim.script import Behaviour
from faregate.types import JSON, Usage
from faregate.wire.usage import usage_json

Translate = Callable[[AsyncIterable[JSON]], AsyncIterator[JSON]]
Frame = Callable[[JSON], bytes]


def completion(model: str, reply: Reply, tool: str | None, usage: Usage, empty: bool) -> JSON:
    """The whole chat answer the chat endpoint would give (one choice)."""
    if empty:
        choices: list[JSON] = []
    elif tool is not None:
        message = wire.tool_message(wire.new_id("call_"), tool, reply.content)
        choices = [wire.choice(message, "tool_calls")]
    else:
        choices = [wire.choice(wire.text_message(reply.content), reply.finish_reason)]
    return {
        "id": wire.new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_json(usage),
    }


def chunks(reply: Reply, tool: str | None, usage: Usage, empty: bool) -> list[JSON]:
    """The chat chunks of the same answer streamed: role, one per token (or the tool call's
    two deltas), the finish and the usage."""
    head: JSON = {"id": wire.new_id(), "object": "chat.completion.chunk", "created": int(time.time())}

    def chunk(delta: JSON, finish: str | None = None) -> JSON:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out: list[JSON] = []
    if not empty:
        if tool is not None:
            call_head, arguments = wire.tool_call_deltas(wire.new_id("call_"), tool, reply.content)
            out += [chunk(call_head), chunk(arguments)]
        else:
            out.append(chunk(wire.role_delta()))
            out += [chunk({"content": piece}) for piece in reply.pieces or [reply.content]]
    out.append(chunk({}, "tool_calls" if tool is not None else reply.finish_reason))
    out.append({**head, "choices": [], "usage": usage_json(usage)})
    return out


async def frames_by_chunk(source: list[JSON], translate: Translate, frame: Frame) -> list[bytes]:
    """The translated stream's bytes, one group per source chunk (plus a last group for what
    follows the end), so a group goes out when its chunk would have."""
    groups = [b""] * (len(source) + 1)
    current = 0

    async def feed() -> AsyncIterator[JSON]:
        nonlocal current
        for i, item in enumerate(source):
            current = i
            yield item
        current = len(source)

    async for event in translate(feed()):
        groups[current] += frame(event)
    return groups


async def send_stream(
    request: web.BaseRequest,
    groups: list[bytes],
    content_groups: int,
    behaviour: Behaviour,
    cut: bool,
    paced: Callable[[web.StreamResponse, list[bytes], bytes, float], Awaitable[None]],
    *,
    stall: bool = False,
) -> web.StreamResponse:
    """Send the groups: the first `content_groups` paced like tokens, the rest as the trailer.
    `cut` (the truncate fault) sends part of the content, then ends the body; `stall` sends part
    of it, then nothing for a while, then the rest (delivery.stalled)."""
    response = web.StreamResponse(headers=wire.SSE_HEADERS)
    if cut:
        response.force_close()
    gap = 1.0 / behaviour.tokens_per_s if behaviour.tokens_per_s else 0.0
    try:
        await response.prepare(request)
        content, trailer = groups[:content_groups], b"".join(groups[content_groups:])
        if cut:
            kept = (len(content) - 1) // 2 if behaviour.after_tokens is None else behaviour.after_tokens
            await paced(response, content[: 1 + kept], b"", gap)
            await response.write_eof()
            return response
        if stall:
            await delivery.stalled(response, content, trailer, behaviour)
            return response
        await paced(response, content, trailer, gap)
    except ConnectionError:
        pass  # the client went away mid-stream
    return response
