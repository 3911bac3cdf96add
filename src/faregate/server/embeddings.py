"""POST /v1/embeddings: the chat pipeline's stages, for a request that names an embedding model.

  1. authenticate       the chat pipeline's key check
  2. read the request   the same body limits, then wire.embeddings' checks; the model must be an
                        embedding model of the catalog (a chat model: 400, unknown: 404)
  3. cache lookup       the exact cache: the same inputs, dimensions and encoding for the same
                        model and tenant is a hit (cost 0, still one request against the limits)
  4. plan               the model's offers on providers whose wire has embeddings, cheapest
                        healthy first (breakers as for chat); no routes: the request names a model
  5. rate limit and     the worst case (every input token at the dearest offer's input price)
     reserve budget     held by the same atomic Admission.admit (402/429 exactly as for chat)
  6. call upstream      the attempt loop's `embed`: retries, fallbacks between the model's
                        providers, and an answer missing vectors counted as a failed call
  7. respond            the upstream body with our model name and usage.cost, and the chat
                        answers' x-faregate-* headers
  8. settle and record  the chat pipeline's: the hold settled to the exact cost, one record

Everything here that is not embeddings-specific is the chat pipeline's own code (its
authenticate, read_body, settle_and_record, unexpected) on the same `Exchange`, so the
invariants are the chat pipeline's: every request recorded once, every hold settled or released.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from aiohttp import web

from faregate import usage_estimate
from faregate.accounts.keys import ApiKey
from faregate.cache.service import CachedAnswer
from faregate.catalog.models import Model
from faregate.errors import FaregateError, InvalidRequest
from faregate.providers.registry import ProviderRegistry
from faregate.routing.attempts import Served, served_cost
from faregate.routing.estimate import LIGHT_RESERVE_FACTOR
from faregate.routing.plan import Plan
from faregate.server.aiohttp_seam import AiohttpRequest
from faregate.server.exchange import Exchange
from faregate.server.http_seam import HttpRequest, Reply, Whole
from faregate.server.pipeline import ChatPipeline
from faregate.server.responses import error_reply
from faregate.types import JSON, MILLION, Usage
from faregate.wire import embeddings as wire

# Above this many characters of text input, tokens are counted in a thread (the event loop
# keeps serving other requests meanwhile).
_COUNT_INLINE_CHARS = 20_000


@dataclass(slots=True)
class EmbeddingJob:
    """One embeddings request as the stages see it (it meets types.RequestMeta)."""

    request_id: str
    body: JSON
    parsed: wire.EmbeddingRequest
    model: Model
    hints: JSON = field(default_factory=dict)
    key_id: str | None = None
    premium: bool = False
    verification: bool = False  # never: verifications make chat calls only
    started: float = 0.0
    counted: int | None = None

    async def input_tokens(self) -> int:
        """The inputs' tokens as the gateway counts them, counted when first needed (an upstream
        that reported no usage), once."""
        if self.counted is None:
            self.counted = await _count(self.parsed, wire.input_tokens)
        return self.counted

    async def tokens_to_hold(self) -> int:
        """The inputs' tokens a budget holds: a worst case (`_held_tokens`)."""
        return await _count(self.parsed, _held_tokens)


class EmbeddingsPipeline:
    def __init__(self, chat: ChatPipeline, providers: ProviderRegistry) -> None:
        self.chat = chat
        self.providers = providers

    async def handle(self, http_request: web.Request) -> web.StreamResponse:
        """The aiohttp route handler (server/aiohttp_seam.py)."""
        http = AiohttpRequest(http_request)
        return http.written(await self.serve(http))

    async def serve(self, http_request: HttpRequest) -> Reply:
        exchange = Exchange.begin(http_request, self.chat.baseline)
        exchange.record.wire = "embeddings"  # errors are OpenAI's shape, as the chat wire's
        job: EmbeddingJob | None = None
        try:
            exchange.authenticated(await self.chat.authenticate(http_request))
            job = await self.read_request(exchange)
            cached = await self.look_up(exchange, job)
            if cached is not None:
                exchange.found_in_cache()
                exchange.admitted(await self.chat.admission.count_hit(self._key(exchange), job))
                exchange.from_cache(cached)
                baseline = exchange.record.baseline_cost_usd
                body = wire.response_body(cached.body, job.model.name, cached.usage, Decimal(0), baseline)
                return _json(body, exchange)
            plan = self.plan(exchange, job)
            await self.reserve(exchange, job, plan)
            served = await self.chat.runner.embed(job, job.body, len(job.parsed.inputs), plan)
            return await self.respond(exchange, job, served)
        except FaregateError as error:
            exchange.failed(error)
            return error_reply(error, exchange.headers)
        except Exception as exc:
            return self.chat.unexpected(exchange, exc)
        finally:
            await self.chat.settle_and_record(exchange)

    # -- the stages, in order -----------------------------------------------------------------

    async def read_request(self, exchange: Exchange) -> EmbeddingJob:
        body = await self.chat.read_body(exchange.http)
        exchange.asked_for(body)
        parsed = wire.parse_request(body)
        if "models" in body:
            raise InvalidRequest(
                "'models' (a fallback list of models) is for chat requests; an embeddings request names "
                "one model, and falls back between the providers of that model.",
                param="models",
            )
        hints = _hints(body)
        model = self.chat.planner.embedding_model(parsed.model)
        key = self._key(exchange)
        job = EmbeddingJob(
            request_id=exchange.record.request_id,
            body=wire.upstream_body(body),
            parsed=parsed,
            model=model,
            hints=hints,
            key_id=key.id,
            premium=key.premium,
            started=exchange.started,
        )
        exchange.routed(model.name)  # as the plan names it: a hit and a miss are one route
        # Savings are measured against the model's own list price: the chat baseline model has no
        # embeddings to compare with.
        exchange.baseline = model.list_price
        return job

    async def look_up(self, exchange: Exchange, job: EmbeddingJob) -> CachedAnswer | None:
        cache = self.chat.cache
        if cache is None:
            exchange.decided(None)
            return None
        parsed = job.parsed
        material: JSON = {
            "input": parsed.inputs,
            "dimensions": parsed.dimensions,
            "encoding_format": parsed.encoding_format,
        }
        decision = cache.decide_embeddings(
            material, job.hints, job.key_id, exchange.http.headers, job.model.name
        )
        exchange.decided(decision)
        return await cache.lookup_exact(decision)

    def plan(self, exchange: Exchange, job: EmbeddingJob) -> Plan:
        plan = self.chat.planner.embedding_plan(
            job.model.name, premium=job.premium, key_id=job.key_id, serves=self.providers.embeds
        )
        exchange.planned(plan)
        return plan

    async def reserve(self, exchange: Exchange, job: EmbeddingJob, plan: Plan) -> None:
        """Every input token at the dearest candidate's input price: the most any one call costs
        (embeddings have no output)."""
        if not self.chat.metered:
            return
        dearest = max(c.offer.price.dearest_input for c in plan.candidates)
        tokens_held = await job.tokens_to_hold()
        worst = Decimal(tokens_held) * dearest / MILLION
        hold = await self.chat.admission.admit(self._key(exchange), job, worst, tokens_held)
        exchange.admitted(hold.headers, hold)

    async def respond(self, exchange: Exchange, job: EmbeddingJob, served: Served) -> Whole:
        candidate, completion = served.candidate, served.completion
        exchange.answered_by(candidate, served.attempts)
        usage = completion.usage or Usage(await job.input_tokens(), 0, estimated=True)
        cost = served_cost(candidate, usage, served.attempts)
        exchange.embedded(candidate, usage, cost)
        baseline = exchange.record.baseline_cost_usd
        body = wire.response_body(completion.body, candidate.model.name, usage, cost, baseline)
        data = orjson.dumps(body)
        cache = self.chat.cache
        if (
            cache is not None
            and exchange.cache is not None
            and not usage.estimated
            # What the store would not keep (cache.max_entry_bytes: a batch of vectors is
            # megabytes) is not handed to it, to be encoded again in the background for nothing.
            and len(data) <= cache.settings.max_entry_bytes
        ):
            cache.remember_exact(exchange.cache, body, candidate.model.name, candidate.offer.provider, usage)
        return Whole(200, data, exchange.headers)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _key(exchange: Exchange) -> ApiKey:
        assert exchange.key is not None
        return exchange.key


def _hints(body: JSON) -> JSON:
    """The gateway hints that apply to embeddings: `faregate.cache` only."""
    hints = body.get("faregate") or {}
    if not isinstance(hints, dict):
        raise InvalidRequest("'faregate' must be an object of gateway hints.", param="faregate")
    other = sorted(set(hints) - {"cache"})
    if other:
        raise InvalidRequest(
            f"'faregate.{other[0]}' does not apply to embeddings (only 'faregate.cache' does).",
            param=f"faregate.{other[0]}",
        )
    return hints


async def _count(parsed: wire.EmbeddingRequest, measure: Callable[[wire.EmbeddingRequest], int]) -> int:
    """`measure(parsed)`: the inputs' tokens as the gateway counts them (faregate.usage_estimate).
    Long text (or an opted-in tokenizer not yet loaded) is counted in a thread."""
    chars = sum(len(item) for item in parsed.inputs if isinstance(item, str))
    if chars <= _COUNT_INLINE_CHARS and usage_estimate.ready():
        return measure(parsed)
    return await asyncio.to_thread(measure, parsed)


def _held_tokens(parsed: wire.EmbeddingRequest) -> int:
    """The inputs' tokens for a budget's worst case: token arrays as sent; each text at the
    gateway's count, which in `light` mode is raised as a chat prompt's is (LIGHT_RESERVE_FACTOR:
    the light estimate counts some texts, a table of numbers, under o200k), never past its UTF-8
    bytes (no token is shorter than a byte)."""
    count = usage_estimate.count_text
    light = usage_estimate.mode() == "light"
    total = 0
    for item in parsed.inputs:
        if isinstance(item, tuple):
            total += len(item)
        elif light:
            total += min(len(item.encode()), math.ceil(count(item) * LIGHT_RESERVE_FACTOR))
        else:
            total += count(item)
    return total


def _json(body: JSON, exchange: Exchange) -> Whole:
    return Whole(200, orjson.dumps(body), exchange.headers)
