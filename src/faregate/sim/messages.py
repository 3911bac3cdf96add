"""The simulator's Anthropic Messages endpoint: POST /v1/messages (and count_tokens).

Scripted like the chat endpoint (sim/translated.py says how): the same latency, answers and
faults, with Anthropic's shapes for them - 429 rate_limit_error with retry-after, 500
api_error, `unavailable` as 529 overloaded_error, 401 authentication_error for `unauthorized`, a
cut body or event stream for `truncate`, an empty content list for `empty_choices`. Usage is
exact: input_tokens, output_tokens and, for requests with cache_control marks,
cache_creation_input_tokens and cache_read_input_tokens from the simulated prompt cache
(sim/prompt_cache.py), input + writes + reads being the request's prompt tokens as the chat
endpoint would count them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from faregate import tokens
from faregate.errors import InvalidRequest
from faregate.sim import answers, faults, refusals, translated
from faregate.sim.delivery import cut_body, paced, reset_connection
from faregate.sim.faults import JSON_TYPE
from faregate.sim.prompt_cache import PromptCache
from faregate.sim.script import ScriptedRequestError
from faregate.types import JSON, Usage
from faregate.wire.anthropic import MESSAGES_EFFORT, messages_to_chat
from faregate.wire.anthropic_replies import completion_to_message
from faregate.wire.anthropic_stream import messages_events, sse_frame

if TYPE_CHECKING:
    from faregate.sim.simulator import Simulator


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, headers=headers, content_type=JSON_TYPE)


class MessagesEndpoint:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator
        self.cache = PromptCache()

    async def count_tokens(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self._sim.warm()
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            chat = messages_to_chat(body, count_only=True)
        except InvalidRequest as exc:
            return error(400, "invalid_request_error", exc.message)
        return web.Response(
            body=orjson.dumps({"input_tokens": tokens.count_input(chat)}), content_type=JSON_TYPE
        )

    def _refused_effort(self, model: str, effort: object) -> str | None:
        """Why `model` refuses output_config.effort `effort` (none taken, as by Claude Haiku 4.5,
        or not this one, as "max" by Claude Opus 4.5: sim/refusals.py), or None."""
        if MESSAGES_EFFORT in self._sim.refusals.get(model, frozenset()):
            return "output_config.effort: This model does not support the effort parameter."
        efforts = self._sim.efforts.get(model)
        return refusals.effort_refusal(effort, efforts, "output_config.effort") if efforts else None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self._sim.warm()
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            chat = messages_to_chat(_without_sim(body))
        except InvalidRequest as exc:
            self._sim.stats.rejected += 1
            return error(400, "invalid_request_error", exc.message)
        model = str(chat["model"])
        if self._sim.script.strict_models and model not in self._sim.known_models:
            self._sim.stats.rejected += 1
            return error(404, "not_found_error", f"model: {model}")
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        if effort is not None and (refused := self._refused_effort(model, effort)) is not None:
            self._sim.stats.rejected += 1
            return error(400, "invalid_request_error", refused)
        try:
            behaviour, fault = self._sim.scripted(request, body, model)
        except ScriptedRequestError as exc:
            self._sim.stats.rejected += 1
            return error(400, "invalid_request_error", str(exc))
        stream = chat.get("stream") is True
        self._sim.stats.count(model, fault, stream, "messages")
        if fault == "hang" or (fault == "stall" and not stream):
            await asyncio.sleep(behaviour.hang_s)
            fault = None
        if fault == "reset":
            return reset_connection(request)
        if fault == "rate_limit":
            _, headers = faults.rate_limit(behaviour.retry_after_s)
            return error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit (simulated)",
                headers,
            )
        if fault == "server_error":
            return error(500, "api_error", "Internal server error (simulated)")
        if fault == "unavailable":
            return error(529, "overloaded_error", "Overloaded (simulated)")
        if fault == "unauthorized":
            return error(401, "authentication_error", "invalid x-api-key (simulated)")

        prompt = tokens.count_input(chat)
        reply, tool = answers.scripted_reply(chat, behaviour, fault, chat["max_tokens"], stream)
        cache = self.cache.use(model, chat, prompt)
        usage = Usage(prompt, reply.tokens, False, cache.read, cache.write, cache.write_1h)
        empty = fault == "empty_choices"
        if not stream:
            message = completion_to_message(
                translated.completion(model, reply, tool, usage, empty), model=model
            )
            if empty:
                message["stop_reason"] = "end_turn"
            delay = behaviour.ttft_ms / 1000
            if behaviour.tokens_per_s:
                delay += max(reply.tokens - 1, 0) / behaviour.tokens_per_s
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "truncate":
                return await cut_body(request, orjson.dumps(message))
            return web.Response(body=orjson.dumps(message), content_type=JSON_TYPE)

        source = translated.chunks(reply, tool, usage, empty)
        start_tokens = prompt - cache.read - cache.write

        def translate(chunks: Any) -> Any:
            return messages_events(chunks, model=model, input_tokens=start_tokens)

        groups = await translated.frames_by_chunk(source, translate, sse_frame)
        if behaviour.ttft_ms > 0:
            await asyncio.sleep(behaviour.ttft_ms / 1000)
        # The finish and usage chunks, and the end, make the trailer; the rest is paced content.
        return await translated.send_stream(
            request, groups, len(source) - 2, behaviour, fault == "truncate", paced, stall=fault == "stall"
        )


async def _json_body(request: web.BaseRequest) -> JSON | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "invalid_request_error", f"The request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "invalid_request_error", "The request body must be a JSON object.")
    return body


def _without_sim(body: JSON) -> JSON:
    """The request without the simulator's own `sim` field (read by Simulator.scripted)."""
    return {k: v for k, v in body.items() if k != "sim"}
