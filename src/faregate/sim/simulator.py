"""The request handler: one OpenAI-compatible chat endpoint with scripted latency, answers and faults.

It runs on aiohttp's low-level server (no router, no middlewares): a dict lookup
picks the handler, bodies are parsed with orjson and answers are pre-serialised
bytes, so in a gateway benchmark the simulator is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import orjson
import yaml
from aiohttp import web

from faregate import tokens
from faregate.errors import ConfigError
from faregate.sim import answers, faults, wire
from faregate.sim.answers import Reply
from faregate.sim.faults import JSON_TYPE
from faregate.sim.script import FAULTS, Behaviour, Override, Script, apply_override, parse_script
from faregate.types import JSON

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
FORCEABLE = frozenset((*FAULTS, "none"))
# OpenAI's own bound on `n`.
MAX_N = 128


class ScriptedRequestError(ValueError):
    """A request's `sim` field or x-sim-fault header is not valid (a 400 in the wire's shape)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Stats:
    """Requests served per model and per fault, for tests to assert on (GET /sim/stats)."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0
        self.rejected = 0
        self.models: dict[str, int] = {}
        # Requests per wire they came in on: chat, messages, responses, embeddings (so a test
        # can tell a request passed through natively from one the gateway translated).
        self.wires: Counter[str] = Counter()
        self.faults: dict[str, int] = {}
        self.model_faults: dict[str, Counter[str]] = {}

    def count(self, model: str, fault: str | None, stream: bool, wire: str = "chat") -> None:
        self.requests += 1
        self.wires[wire] += 1
        self.streams += stream
        models = self.models
        models[model] = models.get(model, 0) + 1
        if fault is not None:
            self.faults[fault] = self.faults.get(fault, 0) + 1
            self.model_faults.setdefault(model, Counter())[fault] += 1

    def to_json(self) -> JSON:
        return {
            "requests": self.requests,
            "streams": self.streams,
            "rejected": self.rejected,
            "models": dict(self.models),
            "wires": dict(self.wires),
            "faults": dict(self.faults),
            "by_model": {
                model: {"requests": n, "faults": dict(self.model_faults.get(model, {}))}
                for model, n in self.models.items()
            },
        }


class Simulator:
    def __init__(self, script: Script, catalog_names: Iterable[str] = ()) -> None:
        self.stats = Stats()
        self._catalog_names = list(catalog_names)
        self._warming: asyncio.Future[Any] | None = None
        self.set_script(script)
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/sim/stats"): self._stats,
            ("POST", "/sim/reset"): self._reset_stats,
            ("POST", "/sim/script"): self._replace_script,
        }
        # The other wires' endpoints use this module's fault helpers: imported here, not at the top.
        from faregate.sim.embeddings import EmbeddingsEndpoint
        from faregate.sim.messages import MessagesEndpoint
        from faregate.sim.responses_api import ResponsesEndpoint

        self.messages = MessagesEndpoint(self)
        responses, embeddings = ResponsesEndpoint(self), EmbeddingsEndpoint(self)
        # Clients configured without the /v1 suffix still reach the API.
        for prefix in ("/v1", ""):
            routes["POST", prefix + "/chat/completions"] = self._chat
            routes["GET", prefix + "/models"] = self._models
            routes["POST", prefix + "/messages"] = self.messages.handle
            routes["POST", prefix + "/messages/count_tokens"] = self.messages.count_tokens
            routes["POST", prefix + "/responses"] = responses.handle
            routes["POST", prefix + "/embeddings"] = embeddings.handle
        self._routes = routes

    @property
    def known_models(self) -> frozenset[str]:
        """The models a strict script serves (the script's, and the catalog's if it lists them)."""
        return self._known

    def set_script(self, script: Script) -> None:
        self.script = script
        self._picker = faults.FaultPicker(script.seed)
        names = dict.fromkeys(script.models)
        if script.catalog_models:
            names.update(dict.fromkeys(self._catalog_names))
        self._known = frozenset(names)
        created = int(time.time())
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": created, "owned_by": "faregate-sim"}
                    for n in names
                ],
            }
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self._routes.get((request.method, request.path))
        if route is None:
            return _error(
                404,
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
                "unknown_url",
            )
        return await route(request)

    def start_warming(self) -> None:
        """Begin loading the tokenizer in a thread (about a second), so no request blocks the event loop
        on it; requests that arrive before it is ready wait for it without blocking the others."""
        if self._warming is None and not tokens.is_loaded():
            self._warming = asyncio.ensure_future(asyncio.to_thread(tokens.encoding))

    async def warm(self) -> None:
        """Return once the tokenizer is loaded."""
        self.start_warming()
        if self._warming is not None:
            await asyncio.shield(self._warming)

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON_TYPE)

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=self._models_body, content_type=JSON_TYPE)

    async def _stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(self.stats.to_json()), content_type=JSON_TYPE)

    async def _reset_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        # Fault streams restart from the seed too, so a test after a reset sees the same draws.
        self.stats = Stats()
        self._picker.reset()
        self.messages.cache.reset()
        return web.Response(body=b'{"status":"reset"}', content_type=JSON_TYPE)

    async def _replace_script(self, request: web.BaseRequest) -> web.StreamResponse:
        """Swap the script at run time (YAML or JSON body), e.g. to let a failing model recover."""
        try:
            self.set_script(parse_script(yaml.safe_load(await request.text()) or {}, "POST /sim/script"))
        except (ConfigError, yaml.YAMLError) as exc:
            return _error(400, str(exc), "invalid_request_error")
        return web.Response(body=b'{"status":"replaced"}', content_type=JSON_TYPE)

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self.warm()
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
        if self.script.strict_models and model not in self._known:
            self.stats.rejected += 1
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
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
            behaviour, fault = self.scripted(request, body, model)
        except ScriptedRequestError as exc:
            return self._reject(str(exc), param=exc.param)
        stream = body.get("stream") is True
        self.stats.count(model, fault, stream)
        return await self._answer(request, body, model, behaviour, fault, stream, max_tokens, n)

    def scripted(self, request: web.BaseRequest, body: JSON, model: str) -> tuple[Behaviour, str | None]:
        """The behaviour and the fault (None: a clean answer) for one request to `model`, from the
        script, the request's `sim` field and its x-sim-fault header. Every wire's endpoint
        uses it, so a script means the same thing whichever wire a request comes in on."""
        behaviour = self.script.behaviour(model)
        forced = request.headers.get("x-sim-fault")
        if "sim" in body:
            try:
                override = msgspec.convert(body["sim"], Override)
                behaviour = apply_override(behaviour, override)
            except (msgspec.ValidationError, ValueError) as exc:
                raise ScriptedRequestError(f"bad `sim` field: {exc}".replace("`$", "`sim"), "sim") from exc
            if override.fault is not msgspec.UNSET:
                forced = override.fault
        if forced is not None and forced not in FORCEABLE:
            raise ScriptedRequestError(f"unknown x-sim-fault {forced!r}; expected one of {sorted(FORCEABLE)}")
        fault = forced if forced is not None else self._picker.draw(model, behaviour.faults)
        return behaviour, None if fault == "none" else fault

    def _reject(self, message: str, param: str | None = None) -> web.Response:
        self.stats.rejected += 1
        return _error(400, message, "invalid_request_error", param=param)

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
        if fault == "hang":
            # Nothing is sent while hanging; a client that gives up cancels this handler.
            await asyncio.sleep(behaviour.hang_s)
            fault = None
        if fault == "reset":
            return _reset(request)
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
        delay = behaviour.ttft_ms / 1000 + _gap(behaviour) * max(reply.tokens - 1, 0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault == "truncate":
            return await _cut_body(request, data)
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
                await _paced(response, frames[: 1 + kept], b"", _gap(behaviour))
                await response.write_eof()
                return response
            finish = "tool_calls" if tool is not None else reply.finish_reason
            trailer = [chunks.for_choice(i).finish(finish) if i else chunks.finish(finish) for i in range(n)]
            if include_usage:
                trailer.append(chunks.usage(prompt_tokens, n * reply.tokens))
            trailer.append(wire.DONE)
            await _paced(response, frames, b"".join(trailer), _gap(behaviour))
        except ConnectionError:
            pass  # the client went away mid-stream; nothing to tell it
        return response


def _choice_frames(chunks: wire.ChunkWriter, reply: Reply, tool: str | None) -> list[bytes]:
    """The content frames of one choice: a tool call's two deltas, or the role and each token."""
    if tool is not None:
        head, arguments = wire.tool_call_deltas(wire.new_id("call_"), tool, reply.content)
        return [chunks.delta(head), chunks.delta(arguments)]
    return [chunks.delta(wire.role_delta()), *map(chunks.content, reply.pieces or [])]


async def _paced(response: web.StreamResponse, frames: list[bytes], trailer: bytes, gap: float) -> None:
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


def _gap(behaviour: Behaviour) -> float:
    rate = behaviour.tokens_per_s
    return 1.0 / rate if rate else 0.0


def _error(
    status: int, message: str, type_: str, code: str | None = None, *, param: str | None = None
) -> web.Response:
    return web.Response(
        status=status, body=faults.error_body(message, type_, code, param), content_type=JSON_TYPE
    )


def _reset(request: web.BaseRequest) -> web.StreamResponse:
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


async def _cut_body(request: web.BaseRequest, data: bytes) -> web.StreamResponse:
    """Announce the whole body's length, send half of it, then close the connection."""
    response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
    response.content_length = len(data)
    response.force_close()
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
