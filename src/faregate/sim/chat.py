"""The simulator's OpenAI chat-completions endpoint: POST /v1/chat/completions, checked as OpenAI
checks it, then answered (whole or streamed, `n` choices) or failed as the script says."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from faregate import tokens
from faregate.sim import answers, faults, wire
from faregate.sim.answers import Reply
from faregate.sim.delivery import cut_body, error_response, paced, reset_connection, stalled, token_gap
from faregate.sim.faults import JSON_TYPE
from faregate.sim.script import Behaviour, ScriptedRequestError
from faregate.types import JSON

if TYPE_CHECKING:
    from faregate.sim.simulator import Simulator

# OpenAI's own bound on `n`.
MAX_N = 128


class ChatEndpoint:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self._sim.warm()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return self._reject(f"We could not parse the JSON body of your request: {exc}")
        if not isinstance(body, dict):
            return self._reject("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._reject("you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._reject("'messages' must be a non-empty array", param="messages")
        if self._sim.script.strict_models and model not in self._sim.known_models:
            self._sim.stats.rejected += 1
            return error_response(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
        if (refusal := self._sim.openai_refusal(model, body)) is not None:
            return refusal
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            return self._reject("max_tokens must be a positive integer", param="max_tokens")
        # `n` choices, each generated (and billed) in full, as OpenAI and vLLM do.
        n = body.get("n")
        if n is None:
            n = 1
        if type(n) is not int or not 1 <= n <= MAX_N:
            return self._reject(f"n must be an integer from 1 to {MAX_N}", param="n")

        try:
            behaviour, fault = self._sim.scripted(request, body, model)
        except ScriptedRequestError as exc:
            return self._reject(str(exc), param=exc.param)
        stream = body.get("stream") is True
        self._sim.stats.count(model, fault, stream)
        return await self._answer(request, body, model, behaviour, fault, stream, max_tokens, n)

    def _reject(self, message: str, param: str | None = None) -> web.Response:
        self._sim.stats.rejected += 1
        return error_response(400, message, "invalid_request_error", param=param)

    async def _answer(
        self,
        request: web.BaseRequest,
        body: JSON,
        model: str,
        behaviour: Behaviour,
        fault: str | None,
        stream: bool,
        max_tokens: int | None,
        n: int = 1,
    ) -> web.StreamResponse:
        if fault == "hang" or (fault == "stall" and not stream):
            # Nothing is sent while hanging; a client that gives up cancels this handler.
            await asyncio.sleep(behaviour.hang_s)
            fault = None
        if fault == "reset":
            return reset_connection(request)
        failed = faults.openai_error(fault, behaviour.retry_after_s)
        if failed is not None:
            return failed

        # Billed input as a provider counts it: the messages plus the tools, functions, tool_choice
        # and response_format it renders into the prompt (billed once, whatever `n`).
        prompt_tokens = tokens.count_input(body)
        reply, tool = answers.scripted_reply(body, behaviour, fault, max_tokens, stream)
        if stream:
            return await self._stream(request, body, model, behaviour, fault, reply, prompt_tokens, tool, n)
        return await self._whole(request, model, behaviour, fault, reply, prompt_tokens, tool, n)

    async def _whole(
        self,
        request: web.BaseRequest,
        model: str,
        behaviour: Behaviour,
        fault: str | None,
        reply: Reply,
        prompt_tokens: int,
        tool: str | None,
        n: int = 1,
    ) -> web.StreamResponse:
        if fault == "empty_choices":
            choices = []
        elif tool is not None:
            choices = [
                wire.choice(wire.tool_message(wire.new_id("call_"), tool, reply.content), "tool_calls", i)
                for i in range(n)
            ]
        else:
            message = wire.text_message(reply.content)
            choices = [wire.choice(message, reply.finish_reason, i) for i in range(n)]
        data = wire.completion(model, choices, prompt_tokens, n * reply.tokens)
        # The head arrives when the last token would have: time to first token plus the generation time.
        delay = behaviour.ttft_ms / 1000 + token_gap(behaviour) * max(reply.tokens - 1, 0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "truncate":
            return await cut_body(request, data)
        return web.Response(body=data, content_type=JSON_TYPE)

    async def _stream(
        self,
        request: web.BaseRequest,
        body: JSON,
        model: str,
        behaviour: Behaviour,
        fault: str | None,
        reply: Reply,
        prompt_tokens: int,
        tool: str | None,
        n: int = 1,
    ) -> web.StreamResponse:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        chunks = wire.ChunkWriter(model, include_usage)
        if behaviour.ttft_ms > 0:
            await asyncio.sleep(behaviour.ttft_ms / 1000)
        response = web.StreamResponse(headers=wire.SSE_HEADERS)
        if fault == "truncate":
            response.force_close()
        try:
            await response.prepare(request)
            if fault == "empty_choices":
                tail = [chunks.usage(prompt_tokens, 0)] if include_usage else []
                await response.write(b"".join([chunks.no_choices(), *tail, wire.DONE]))
                return response
            frames = _choice_frames(chunks, reply, tool)
            if n > 1:
                # Every choice streams the same reply, interleaved token by token as OpenAI does.
                others = [_choice_frames(chunks.for_choice(i), reply, tool) for i in range(1, n)]
                frames = [frame for group in zip(frames, *others, strict=True) for frame in group]
            if fault == "truncate":
                # Some content, then the end of the body: no finish_reason, no usage, no [DONE].
                after = behaviour.after_tokens
                kept = (len(frames) - 1) // 2 if after is None else after
                await paced(response, frames[: 1 + kept], b"", token_gap(behaviour))
                await response.write_eof()
                return response
            finish = "tool_calls" if tool is not None else reply.finish_reason
            trailer = [chunks.for_choice(i).finish(finish) if i else chunks.finish(finish) for i in range(n)]
            if include_usage:
                trailer.append(chunks.usage(prompt_tokens, n * reply.tokens))
            trailer.append(wire.DONE)
            if fault == "stall":
                await stalled(response, frames, b"".join(trailer), behaviour)
                return response
            await paced(response, frames, b"".join(trailer), token_gap(behaviour))
        except ConnectionError:
            pass  # the client went away mid-stream; nothing to tell it
        return response


def _choice_frames(chunks: wire.ChunkWriter, reply: Reply, tool: str | None) -> list[bytes]:
    """The content frames of one choice: a tool call's two deltas, or the role and each token."""
    if tool is not None:
        head, arguments = wire.tool_call_deltas(wire.new_id("call_"), tool, reply.content)
        return [chunks.delta(head), chunks.delta(arguments)]
    return [chunks.delta(wire.role_delta()), *map(chunks.content, reply.pieces or [])]
