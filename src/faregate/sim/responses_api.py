"""The simulator's OpenAI Responses endpoint: POST /v1/responses, stateless, served natively
(so a pass-through to a provider that speaks it can be tested).

Scripted like the chat endpoint (sim/translated.py says how), with OpenAI's error shapes for
the faults; a stream cut by `truncate` ends without response.completed, and `empty_choices`
answers a Response with no output items.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from faregate import tokens
from faregate.errors import InvalidRequest
from faregate.sim import answers, faults, translated
from faregate.sim.delivery import cut_body, paced, reset_connection
from faregate.sim.faults import JSON_TYPE
from faregate.sim.script import ScriptedRequestError
from faregate.types import JSON, Usage
from faregate.wire.responses import completion_to_response, responses_to_chat
from faregate.wire.responses_stream import response_events, sse_frame

if TYPE_CHECKING:
    from faregate.sim.simulator import Simulator

# The Responses names of the chat settings a model may refuse (as OpenAI's 400 names them).
_RESPONSES_NAMES = {"reasoning_effort": "reasoning.effort", "verbosity": "text.verbosity"}


def error(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> web.Response:
    return web.Response(
        status=status, body=faults.error_body(message, kind, code, param), content_type=JSON_TYPE
    )


class ResponsesEndpoint:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self._sim.warm()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return error(
                400, f"We could not parse the JSON body of your request: {exc}", "invalid_request_error"
            )
        if not isinstance(body, dict):
            return error(400, "The request body must be a JSON object.", "invalid_request_error")
        try:
            chat = responses_to_chat(_without_sim(body))
        except InvalidRequest as exc:
            self._sim.stats.rejected += 1
            return error(400, exc.message, "invalid_request_error", param=exc.param)
        model = str(chat["model"])
        if self._sim.script.strict_models and model not in self._sim.known_models:
            self._sim.stats.rejected += 1
            return error(
                404,
                f"The model `{model}` does not exist.",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        if (refusal := self._sim.openai_refusal(model, chat, _RESPONSES_NAMES)) is not None:
            return refusal
        try:
            behaviour, fault = self._sim.scripted(request, body, model)
        except ScriptedRequestError as exc:
            self._sim.stats.rejected += 1
            return error(400, str(exc), "invalid_request_error", param=exc.param)
        stream = chat.get("stream") is True
        self._sim.stats.count(model, fault, stream, "responses")
        if fault == "hang" or (fault == "stall" and not stream):
            await asyncio.sleep(behaviour.hang_s)
            fault = None
        if fault == "reset":
            return reset_connection(request)
        failed = faults.openai_error(fault, behaviour.retry_after_s)
        if failed is not None:
            return failed

        prompt = tokens.count_input(chat)
        reply, tool = answers.scripted_reply(chat, behaviour, fault, chat.get("max_tokens"), stream)
        usage = Usage(prompt, reply.tokens)
        empty = fault == "empty_choices"
        if not stream:
            response = completion_to_response(
                translated.completion(model, reply, tool, usage, empty), body, model=model
            )
            delay = behaviour.ttft_ms / 1000
            if behaviour.tokens_per_s:
                delay += max(reply.tokens - 1, 0) / behaviour.tokens_per_s
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "truncate":
                return await cut_body(request, orjson.dumps(response))
            return web.Response(body=orjson.dumps(response), content_type=JSON_TYPE)

        source = translated.chunks(reply, tool, usage, empty)

        def translate(chunks: Any) -> Any:
            return response_events(chunks, model=model, request=body)

        groups = await translated.frames_by_chunk(source, translate, sse_frame)
        if behaviour.ttft_ms > 0:
            await asyncio.sleep(behaviour.ttft_ms / 1000)
        return await translated.send_stream(
            request, groups, len(source) - 2, behaviour, fault == "truncate", paced, stall=fault == "stall"
        )


def _without_sim(body: JSON) -> JSON:
    """The request without the simulator's own `sim` field (read by Simulator.scripted)."""
    return {k: v for k, v in body.items() if k != "sim"}
