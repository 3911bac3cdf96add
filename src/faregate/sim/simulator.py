"""The request handler: scripted latency, answers and faults behind one endpoint per wire
(sim/chat.py, messages.py, responses_api.py, embeddings.py); here the script, the stats, the
fault draws every endpoint shares, and the simulator's own endpoints (/health, /sim/...).

It runs on aiohttp's low-level server (no router, no middlewares): a dict lookup
picks the handler, bodies are parsed with orjson and answers are pre-serialised
bytes, so in a gateway benchmark the simulator is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec
import orjson
import yaml
from aiohttp import web

from faregate import tokens
from faregate.errors import ConfigError
from faregate.sim import faults, refusals
from faregate.sim.chat import ChatEndpoint
from faregate.sim.delivery import error_response
from faregate.sim.embeddings import EmbeddingsEndpoint
from faregate.sim.faults import JSON_TYPE
from faregate.sim.messages import MessagesEndpoint
from faregate.sim.responses_api import ResponsesEndpoint
from faregate.sim.script import (
    FAULTS,
    Behaviour,
    Override,
    Script,
    ScriptedRequestError,
    apply_override,
    parse_script,
)
from faregate.types import JSON

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
FORCEABLE = frozenset((*FAULTS, "none"))


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
    def __init__(
        self,
        script: Script,
        catalog_names: Iterable[str] = (),
        refusals: Mapping[str, frozenset[str]] | None = None,
        efforts: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.stats = Stats()
        self._catalog_names = list(catalog_names)
        # The settings each model refuses with a 400, as its real API does (sim/refusals.py),
        # and the efforts each model listed takes (any other refused).
        self.refusals: Mapping[str, frozenset[str]] = refusals or {}
        self.efforts: Mapping[str, tuple[str, ...]] = efforts or {}
        self._warming: asyncio.Future[Any] | None = None
        self.set_script(script)
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/sim/stats"): self._stats,
            ("POST", "/sim/reset"): self._reset_stats,
            ("POST", "/sim/script"): self._replace_script,
        }
        chat = ChatEndpoint(self)
        self.messages = MessagesEndpoint(self)
        responses, embeddings = ResponsesEndpoint(self), EmbeddingsEndpoint(self)
        # Clients configured without the /v1 suffix still reach the API.
        for prefix in ("/v1", ""):
            routes["POST", prefix + "/chat/completions"] = chat.handle
            routes["GET", prefix + "/models"] = self._models
            routes["POST", prefix + "/messages"] = self.messages.handle
            routes["POST", prefix + "/messages/count_tokens"] = self.messages.count_tokens
            routes["POST", prefix + "/responses"] = responses.handle
            routes["POST", prefix + "/embeddings"] = embeddings.handle
        self._routes = routes

    def openai_refusal(
        self, model: str, chat: JSON, names: Mapping[str, str] | None = None
    ) -> web.Response | None:
        """OpenAI's 400 for a setting of `chat` (the request as a chat body) that `model` refuses,
        or for an effort it does not take, counted as rejected; None when it takes them all.
        `names`: the settings' names on the client's wire (/responses says reasoning.effort)."""
        refused = self.refusals.get(model)
        refusal = refusals.refusal(chat, refused, names) if refused else None
        efforts = self.efforts.get(model)
        if refusal is None and efforts:
            param = names.get("reasoning_effort", "reasoning_effort") if names else "reasoning_effort"
            refusal = refusals.openai_effort_refusal(chat.get("reasoning_effort"), efforts, param)
        if refusal is not None:
            self.stats.rejected += 1
        return refusal

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
            return error_response(
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
            return error_response(400, str(exc), "invalid_request_error")
        return web.Response(body=b'{"status":"replaced"}', content_type=JSON_TYPE)

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
