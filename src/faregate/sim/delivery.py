"""How the simulator's endpoints put an answer on the connection: frames paced at the script's
token rate, OpenAI's error responses, and the faults that break the connection itself (a reset,
a body cut short)."""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

from faregate.sim import faults
from faregate.sim.faults import JSON_TYPE
from faregate.sim.script import Behaviour


async def paced(response: web.StreamResponse, frames: list[bytes], trailer: bytes, gap: float) -> None:
    """Send the role frame with the first token now, each later token `gap` seconds after the one
    before it, and the trailer (finish, usage, [DONE]) with the last token."""
    if gap == 0 or len(frames) <= 2:
        await response.write(b"".join(frames) + trailer)
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    await response.write(frames[0] + frames[1])
    sent = 2
    while sent < len(frames):
        # Frames are due on an absolute schedule, so sleep overshoot never accumulates; all frames
        # already due go out in one write.
        due = start + (sent - 1) * gap
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
            now = loop.time()
        upto = min(len(frames), max(sent + 1, int((now - start) / gap) + 2))
        data = b"".join(frames[sent:upto])
        await response.write(data + trailer if upto == len(frames) else data)
        sent = upto


async def stalled(
    response: web.StreamResponse, frames: list[bytes], trailer: bytes, behaviour: Behaviour
) -> None:
    """The `stall` fault: the role frame and `after_tokens` content frames (None: half of them),
    then nothing for `hang_s` (a client that gives up cancels this), then the rest."""
    gap = token_gap(behaviour)
    after = behaviour.after_tokens
    kept = 1 + ((len(frames) - 1) // 2 if after is None else after)
    await paced(response, frames[:kept], b"", gap)
    await asyncio.sleep(behaviour.hang_s)
    await paced(response, frames[kept:], trailer, gap)


def token_gap(behaviour: Behaviour) -> float:
    rate = behaviour.tokens_per_s
    return 1.0 / rate if rate else 0.0


def error_response(
    status: int, message: str, type_: str, code: str | None = None, *, param: str | None = None
) -> web.Response:
    return web.Response(
        status=status, body=faults.error_body(message, type_, code, param), content_type=JSON_TYPE
    )


def reset_connection(request: web.BaseRequest) -> web.StreamResponse:
    """Abort the connection with a TCP RST and no response at all."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns close into a reset instead of an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp finds the transport gone when it sends this and drops it quietly.
    return web.Response()


async def cut_body(request: web.BaseRequest, data: bytes) -> web.StreamResponse:
    """Announce the whole body's length, send half of it, then close the connection."""
    response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
    response.content_length = len(data)
    response.force_close()
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
