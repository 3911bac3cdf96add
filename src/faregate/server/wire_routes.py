"""The endpoints of the other inbound wires: Anthropic's Messages API and OpenAI's Responses API.

`POST /v1/messages` and `POST /v1/responses` are the chat pipeline itself with another client
wire (server/client_wires.py): every route, fallback, cache, budget, record and cost rule
applies as for chat completions. `POST /v1/messages/count_tokens` counts as the gateway counts
an estimate (faregate.usage_estimate: the light estimate, or o200k when opted in), for a model or
route the gateway knows (a 404 otherwise, as a request would get); it calls no model and writes
no record. `POST /v1/responses/input_tokens` counts a Responses request the same way. The
Responses API is served stateless: nothing is stored, so
reading or deleting a stored response is a 404 that says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from faregate.errors import FaregateError, NotFound
from faregate.server.aiohttp_seam import AiohttpRequest
from faregate.server.client_wires import MESSAGES, RESPONSES, ClientWire
from faregate.server.http_seam import JSON_TYPE, HttpRequest, Reply
from faregate.server.pipeline import ChatPipeline
from faregate.server.responses import error_response
from faregate.types import JSON
from faregate.wire.anthropic import count_tokens
from faregate.wire.responses import input_tokens

# Method and path to handler: the routes the runner serves without the router.
FastRoutes = dict[tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]]
# The same routes for any server of the seam (the lean one: server/lean_http.py).
LeanRoutes = dict[tuple[str, str], Callable[[HttpRequest], Awaitable[Reply]]]

NOT_STORED = (
    "Stored responses are not supported: this gateway serves the Responses API stateless "
    "(store is always false). Send the whole conversation in `input` instead of a response id."
)


def add_wire_routes(app: web.Application, pipeline: ChatPipeline) -> tuple[FastRoutes, LeanRoutes]:
    """Adds the routes; returns the two POSTs that the runner may serve without the router
    (server.runner.GatewayRunner), as it serves chat completions: the pipeline answers every
    error itself; as aiohttp handlers and as seam handlers."""
    messages, responses = pipeline.handler(MESSAGES), pipeline.handler(RESPONSES)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)

    def counting(
        count: Callable[[JSON], Awaitable[JSON]], wire: ClientWire
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A token-counting endpoint: the body checked first (a 400 names the field), then the
        model, with the 404 the wire's own endpoint would give for a name the gateway does not know."""

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                await pipeline.authenticate(request)
                body = await pipeline.read_body(AiohttpRequest(request))
                counted = await count(body)
                if body["model"] not in pipeline.planner.routes:
                    pipeline.planner.chat_model(body["model"])
            except FaregateError as error:
                return error_response(error, wire=wire)
            return web.Response(body=orjson.dumps(counted), content_type=JSON_TYPE)

        return handler

    async def stored_response(request: web.Request) -> web.StreamResponse:
        try:
            await pipeline.authenticate(request)
        except FaregateError as error:
            return error_response(error, wire=RESPONSES)
        return error_response(NotFound(NOT_STORED, code="stored_responses_not_supported"), wire=RESPONSES)

    app.router.add_post("/v1/messages/count_tokens", counting(count_tokens, MESSAGES))
    app.router.add_post("/v1/responses/input_tokens", counting(input_tokens, RESPONSES))
    app.router.add_get("/v1/responses/{response_id}", stored_response)
    app.router.add_delete("/v1/responses/{response_id}", stored_response)
    fast: FastRoutes = {("POST", "/v1/messages"): messages, ("POST", "/v1/responses"): responses}
    lean: LeanRoutes = {
        ("POST", "/v1/messages"): pipeline.seam_handler(MESSAGES),
        ("POST", "/v1/responses"): pipeline.seam_handler(RESPONSES),
    }
    return fast, lean
