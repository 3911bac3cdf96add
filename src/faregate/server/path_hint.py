"""The path a client meant, for a 404: a newcomer's base_url without `/v1` (`GET /models`) or with
it twice (`POST /v1/v1/chat/completions`) gets told the right path and base_url, not only that
the path is unknown."""

from __future__ import annotations

from aiohttp import web

PREFIX = "/v1"
# The anthropic SDK's base_url is the host: it adds /v1/messages itself, where the openai SDK's
# base_url ends in /v1 and it adds /chat/completions.
ANTHROPIC_PATHS = ("/v1/messages",)
# OpenAI endpoints a client or an older tutorial may call that the gateway does not serve, and
# what to call instead (the path under any number of leading /v1, as the client sent it).
NOT_SERVED = {
    "/completions": "The legacy completions API is not served: send `messages` to POST /v1/chat/completions.",
}


async def meant_path(request: web.Request) -> str | None:
    """The path under exactly one leading `/v1` that this gateway serves for the request's method,
    if it differs from the one asked (None: no such path)."""
    rest = _without_prefix(request.path)
    candidate = PREFIX + rest
    if candidate == request.path or not rest.startswith("/"):
        return None
    match = await request.app.router.resolve(request.clone(rel_url=candidate))
    # An unmatched path or method resolves to a match info carrying its 404 or 405.
    return None if getattr(match, "http_exception", None) is not None else candidate


async def unknown_path_message(request: web.Request) -> str:
    message = f"Unknown path: {request.method} {request.path}."
    instead = NOT_SERVED.get(_without_prefix(request.path))
    if instead is not None:
        return f"{message} {instead}"
    meant = await meant_path(request)
    if meant is None:
        return message
    root = f"{request.scheme}://{request.host}"
    if meant.startswith(ANTHROPIC_PATHS):
        advice = f"Set the anthropic client's base_url to {root} (the SDK adds {PREFIX} itself)."
    else:
        advice = f"Set the client's base_url to {root}{PREFIX} (ending in {PREFIX} once)."
    return f"{message} Did you mean {request.method} {meant}? {advice}"


def _without_prefix(path: str) -> str:
    """`path` without its leading `/v1`s, however many."""
    while path == PREFIX or path.startswith(PREFIX + "/"):
        path = path[len(PREFIX) :]
    return path
