"""The response cache as the request pipeline sees it: decide, look up, store.

Exact entries (the whole answer, keyed by `keying.exact_key`) live in a CacheStore,
in process or in Redis. The semantic cache only holds the meaning of a question and
the exact key of its answer, so both caches share one copy of every answer.
Only deterministic requests are cached unless the request asks otherwise, and every
entry is scoped to the API key unless the request opts into the shared namespace.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from faregate.cache.keying import (
    embeddings_key,
    exact_key,
    is_deterministic,
    routing_material,
    unclassified_fields,
)
from faregate.cache.stores import CacheStore
from faregate.config import CacheSettings
from faregate.embedding.model import ModelUnavailable
from faregate.errors import InvalidRequest
from faregate.lifecycle import Lifecycle
from faregate.routing.routes import parse_hints
from faregate.types import JSON, ChatRequest, Usage

if TYPE_CHECKING:
    from faregate.cache.semantic import SemanticHit

log = logging.getLogger("faregate.cache")

SHARED_NAMESPACE = "shared"
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)")
# A Responses body's conversation, which the chat body's messages hold (system included).
_CONVERSATION = frozenset({"input", "instructions"})


@dataclass(slots=True)
class CacheDecision:
    """What the cache does for one request. status: bypass (not cacheable) or lookup."""

    status: str
    read: bool = False
    write: bool = False
    ttl_s: float = 0.0
    # The request's Cache-Control max-age: no entry stored longer ago than this is served.
    max_age_s: float | None = None
    key: str = ""
    scope: str = ""
    resolved: str = ""
    # The routing hints and key tier that pick the model within `resolved` (keying.routing_material).
    routing: dict[str, str] | None = None
    reason: str = ""
    # The question's embedding, once the semantic lookup computed it.
    vector: Any = None
    # With a calibrated acceptance: the best guard-passing candidate not served (its similarity and
    # the exact key of its answer), labelled once this request's fresh answer is in.
    candidate: tuple[float, str] | None = None


# The decision of most requests (no temperature 0), one for all of them: a bypass is only read,
# never written to (a lookup's decision carries the per-request state), and a decision made per
# request cost a dict of its keywords each time.
NOT_DETERMINISTIC = CacheDecision("bypass", reason="not deterministic (temperature 0 and n 1 are cached)")


@dataclass(slots=True)
class CachedAnswer:
    kind: str  # "hit" or "semantic-hit"
    body: JSON
    model: str
    provider: str
    usage: Usage
    similarity: float = 1.0
    # The exact key of the answer (a semantic hit's entry payload).
    key: str = ""
    # When it was stored (time.time()); 0 for entries stored before it was kept.
    stored_at: float = 0.0
    # A semantic hit counted by a calibrated acceptance (quality/cache_live.py): only one counted
    # may be verified.
    counted: bool = True


def _cache_hint(hints: JSON) -> dict[str, Any]:
    hint = hints.get("cache")
    if hint is None:
        return {}
    if isinstance(hint, bool):
        return {"enabled": hint}
    if not isinstance(hint, dict) or set(hint) - {"enabled", "ttl_s", "namespace"}:
        raise InvalidRequest(
            "'faregate.cache' must be true, false or an object with enabled, ttl_s, namespace.",
            param="faregate.cache",
        )
    enabled = hint.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        # Else "false" or 0, meant as no, was no hint at all: the answer was cached and served.
        raise InvalidRequest(
            "'faregate.cache.enabled' must be true or false.", param="faregate.cache.enabled"
        )
    ttl = hint.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise InvalidRequest(
            "'faregate.cache.ttl_s' must be a positive number.", param="faregate.cache.ttl_s"
        )
    if hint.get("namespace") not in (None, SHARED_NAMESPACE, "key"):
        raise InvalidRequest(
            "'faregate.cache.namespace' must be 'key' or 'shared'.", param="faregate.cache.namespace"
        )
    return hint


class ResponseCache:
    def __init__(self, settings: CacheSettings, store: CacheStore, semantic: Any | None = None) -> None:
        self.settings = settings
        self.store = store
        # A faregate.cache.semantic.SemanticCache[str] (payload = exact key), or None.
        self.semantic = semantic
        self._tasks: set[asyncio.Task[None]] = set()
        # Entries the store kept so far (GET /health shows them): what tests and operators poll to
        # know that a background write has landed.
        self.writes = 0
        self.semantic_writes = 0
        # Called after a semantic entry is stored here (to share it with other instances).
        self.on_semantic_store: Callable[[Any, str, str, float, Any], Awaitable[None]] | None = None
        # A calibrated acceptance (quality/cache_live.CacheCalibration; cache.semantic.max_wrong_hit_rate)
        # and what labels an unserved candidate once the fresh answer is in (quality/cache_verification.py).
        self.acceptance: Any = None
        self.on_fresh_answer: Callable[[CacheDecision, ChatRequest, JSON], Awaitable[None]] | None = None
        # Background work begun by `start` (the semantic sync's tail) and ended by `close`, newest
        # first.
        self.starters: list[Callable[[], None]] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def start(self, lifecycle: Lifecycle) -> None:
        """Load the embedding model in the background, so start-up stays fast (lookups wait for
        it), and begin the background work the cache was built with."""
        if self.semantic is not None:
            lifecycle.spawn("embedding model load", self.semantic.embedder.start())
        for start in self.starters:
            start()

    def decide(
        self,
        request: ChatRequest,
        headers: Any,
        resolve: Callable[[], str],
        by_stream: Callable[[ChatRequest], bool] | None = None,
        definition: Callable[[str], str | None] | None = None,
    ) -> CacheDecision:
        """`resolve` gives the route or canonical model name; `by_stream` whether the route picks
        another model for a stream (Planner.picks_by_stream); `definition` a digest of the
        resolved routes as configured (Planner.route_definition): all only called for cacheable
        requests (most are not: nothing to spend on them)."""
        if not self.settings.enabled:
            return CacheDecision("bypass", reason="cache disabled")
        hint = _cache_hint(request.hints)
        forced = hint.get("enabled") is True
        if not forced and not is_deterministic(request.body):
            return NOT_DETERMINISTIC
        control = _cache_control(headers)
        if "no-store" in control or hint.get("enabled") is False:
            return CacheDecision("bypass", reason="no-store")
        unknown = unclassified_fields(request.body)
        if unknown:
            return CacheDecision("bypass", reason=f"unclassified fields {unknown}")
        resolved = resolve()
        stream = request.stream if by_stream is not None and by_stream(request) else None
        routing = routing_material(parse_hints(request.hints), request.premium, stream)
        configured = definition(resolved) if definition is not None else None
        if configured is not None:
            # A route pointed at other models starts afresh: its old models' answers are not its.
            routing["route"] = configured
        ttl = self._ttl(request.hints, resolved, control, hint)
        scope = SHARED_NAMESPACE if hint.get("namespace") == SHARED_NAMESPACE else f"key:{request.key_id}"
        max_age = _max_age(control)
        return CacheDecision(
            "lookup",
            read=_reads(control, max_age),
            write=True,
            ttl_s=ttl,
            max_age_s=max_age,
            key=exact_key(request.body, resolved, scope, routing),
            scope=scope,
            resolved=resolved,
            routing=routing,
        )

    def decide_embeddings(
        self, material: JSON, hints: JSON, key_id: str | None, headers: Any, resolved: str
    ) -> CacheDecision:
        """An embeddings request: deterministic by nature, so looked up unless the client says
        no-store (or `faregate.cache: false`); keyed by `material` (keying.embeddings_key), exact
        only (the semantic cache holds questions, not inputs to embed)."""
        if not self.settings.enabled:
            return CacheDecision("bypass", reason="cache disabled")
        hint = _cache_hint(hints)
        control = _cache_control(headers)
        if "no-store" in control or hint.get("enabled") is False:
            return CacheDecision("bypass", reason="no-store")
        scope = SHARED_NAMESPACE if hint.get("namespace") == SHARED_NAMESPACE else f"key:{key_id}"
        max_age = _max_age(control)
        return CacheDecision(
            "lookup",
            read=_reads(control, max_age),
            write=True,
            ttl_s=self._ttl(hints, resolved, control, hint),
            max_age_s=max_age,
            key=embeddings_key(material, resolved, scope),
            scope=scope,
            resolved=resolved,
        )

    async def lookup_exact(self, decision: CacheDecision) -> CachedAnswer | None:
        """The exact entry alone (embeddings: the semantic cache is for questions)."""
        if decision.status != "lookup" or not decision.read:
            return None
        found = await self.store.get(decision.key)
        return None if found is None else _answer("hit", found, decision.max_age_s)

    def remember_exact(
        self, decision: CacheDecision, answer: JSON, model: str, provider: str, usage: Usage
    ) -> None:
        """Store an exact entry in the background (no semantic entry)."""
        if decision.status != "lookup" or not decision.write:
            return
        task = asyncio.create_task(self._store_exact(decision, answer, model, provider, usage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store_exact(
        self, decision: CacheDecision, answer: JSON, model: str, provider: str, usage: Usage
    ) -> None:
        try:
            await self._write(decision, answer, model, provider, usage)
        except Exception:
            log.exception("could not store a cache entry")

    def _ttl(self, hints: JSON, resolved: str, control: str, hint: dict[str, Any]) -> float:
        # What the client asks for is capped (cache.max_ttl_s): a shared Redis is not its to fill
        # for years, and Redis refuses an expiry past its range (every write failed).
        if hint.get("ttl_s"):
            return min(float(hint["ttl_s"]), self.settings.max_ttl_s)
        match = _MAX_AGE.search(control)
        if match and int(match.group(1)) > 0:
            return min(float(match.group(1)), self.settings.max_ttl_s)
        if resolved in self.settings.route_ttl_s:
            return self.settings.route_ttl_s[resolved]
        tier = hints.get("tier")
        if isinstance(tier, str) and tier in self.settings.tier_ttl_s:
            return self.settings.tier_ttl_s[tier]
        return self.settings.ttl_s

    async def lookup(self, decision: CacheDecision, request: ChatRequest) -> CachedAnswer | None:
        if decision.status != "lookup" or not decision.read:
            return None
        found = await self.store.get(decision.key)
        answer = None if found is None else _answer("hit", found, decision.max_age_s)
        if answer is not None:
            return answer
        if self.semantic is None:
            return None
        query = self._semantic_query(decision, request)
        if query is None:
            return None
        scope, text, turns = query
        if self.acceptance is not None:
            self.semantic.threshold = self.acceptance.threshold()
        try:
            result = await self.semantic.explain(scope, text, turns=turns)
        except ModelUnavailable:
            return None  # the model failed to load: logged once per try (embedding/embedder.py)
        except Exception:
            log.exception("semantic cache lookup failed; answering without it")
            return None
        # Kept so that storing this request's answer does not embed the same text again.
        decision.vector = result.vector
        hit = result.hit
        if (
            hit is not None
            and self.acceptance is not None
            and self.acceptance.conflicted(hit.entry.payload, hit.similarity)
        ):
            hit = None  # a different question was seen this close to this entry
        answer, kept = (None, False) if hit is None else await self._semantic_answer(hit, decision)
        if self.acceptance is not None and result.status != "skipped":
            # Counted once the answer is read: a hit whose answer is gone, unreadable or too old
            # for the request's max-age is not served. An unserved candidate is labelled by the
            # fresh answer when its own is still there to compare.
            candidate = result.candidate
            similarity = None if candidate is None else candidate.similarity
            counted = self.acceptance.looked_up(similarity, answer is not None)
            if answer is not None:
                answer.counted = counted
            if counted and candidate is not None and answer is None and (hit is None or kept):
                decision.candidate = (candidate.similarity, candidate.entry.payload)
        return answer

    async def _semantic_answer(
        self, hit: SemanticHit[str], decision: CacheDecision
    ) -> tuple[CachedAnswer | None, bool]:
        """The answer a semantic hit serves (None: not served), and whether its answer is kept."""
        assert self.semantic is not None
        found = await self.store.read(hit.entry.payload)
        answer = None if found.value is None else _readable("semantic-hit", found.value)
        if answer is None:
            if found.answered:
                # The answer is gone (expired, evicted, too big to keep) or unreadable, and the
                # fresh one is stored under this request's key, not over it: left in the index, its
                # meaning stays the nearest entry, and every paraphrase near it a miss.
                try:
                    await self.semantic.forget(hit.entry)
                except Exception:
                    log.exception("could not drop a semantic cache entry whose answer is gone")
            return None, False
        if _older(answer, decision.max_age_s):
            return None, True
        answer.similarity = hit.similarity
        answer.key = hit.entry.payload
        return answer, True

    def _semantic_query(self, decision: CacheDecision, request: ChatRequest) -> tuple[Any, str, int] | None:
        from faregate.cache.semantic import conversation_text, scope_for

        messages = request.body.get("messages") or []
        conversation = conversation_text(messages)
        if conversation is None:
            return None
        text, turns = conversation
        # Everything but the conversation must match exactly: model/route, tenant, system, tools,
        # and the other key fields (temperature, max_tokens, response_format...).
        rest = {k: v for k, v in request.body.items() if k != "messages"}
        native = rest.get("responses_request")
        if isinstance(native, dict):
            # A Responses body carried for a pass-through holds the conversation too: compared by
            # meaning (its messages), else every wording was a scope of its own and never hit.
            rest["responses_request"] = {k: v for k, v in native.items() if k not in _CONVERSATION}
        route = decision.resolved + "|" + exact_key(rest, decision.resolved, decision.scope, decision.routing)
        return scope_for(decision.scope, route, messages, request.body.get("tools")), text, turns

    def remember(
        self,
        decision: CacheDecision,
        request: ChatRequest,
        answer: JSON,
        model: str,
        provider: str,
        usage: Usage,
    ) -> None:
        """Store an answer in the background: never on the response's critical path."""
        if decision.status != "lookup" or not decision.write:
            return
        task = asyncio.create_task(self._store(decision, request, answer, model, provider, usage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(
        self,
        decision: CacheDecision,
        request: ChatRequest,
        answer: JSON,
        model: str,
        provider: str,
        usage: Usage,
    ) -> None:
        if self.on_fresh_answer is not None and decision.candidate is not None:
            try:
                await self.on_fresh_answer(decision, request, answer)
            except Exception:
                log.exception("could not label a semantic-cache candidate")
        try:
            if not await self._write(decision, answer, model, provider, usage):
                # Not kept (too big for the in-process store, Redis down or skipped): nor is its
                # meaning, which would be the nearest entry for every paraphrase near it and
                # serve none of them (each a miss), here and on every instance it is shared with.
                return
            if self.semantic is not None:
                query = self._semantic_query(decision, request)
                # Nor shared, when not cached by meaning here (too many turns, too long a text): the
                # other instances would not keep it either, and the stream would carry its text.
                if query is not None and self.semantic.cacheable(query[1], query[2]):
                    scope, text, turns = query
                    if decision.vector is None and self.on_semantic_store is not None:
                        # No lookup embedded it (a refresh reads nothing); an entry is shared
                        # with its vector, so embedded here.
                        decision.vector = await self.semantic.embedder.embed(text)
                    stored = await self.semantic.store(
                        scope, text, decision.key, turns=turns, ttl_s=decision.ttl_s, vector=decision.vector
                    )
                    self.semantic_writes += stored is not None
                    if self.on_semantic_store is not None:
                        await self.on_semantic_store(
                            scope, text, decision.key, decision.ttl_s, decision.vector
                        )
        except ModelUnavailable:
            pass  # stored exactly only: the model failed to load (logged once per try)
        except Exception:
            log.exception("could not store a cache entry")

    async def _write(
        self, decision: CacheDecision, answer: JSON, model: str, provider: str, usage: Usage
    ) -> bool:
        """Whether the store kept the answer."""
        value = orjson.dumps(
            {
                "body": answer,
                "model": model,
                "provider": provider,
                "usage": [usage.prompt_tokens, usage.completion_tokens],
                # Apart from `usage` (whose layout older versions sharing the Redis read): what a hit
                # is recorded with, so its baseline prices prompt-cache reads and writes and audio
                # as the answer's own did, not every prompt token at the full input price.
                "usage_parts": [
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    usage.cache_write_1h_tokens,
                    usage.audio_prompt_tokens,
                    usage.audio_completion_tokens,
                ],
                "stored_at": time.time(),
            }
        )
        kept = await self.store.set(decision.key, value, decision.ttl_s)
        self.writes += kept
        return kept

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Newest first: what was built on the embedder (the semantic sync, whose tail adds entries
        # on its worker) ends before the embedder does.
        for closer in reversed(self.closers):
            await closer()
        await self.store.close()


def _cache_control(headers: Any) -> str:
    """The request's Cache-Control directives, lowercased, from every line of the header: HTTP
    reads several lines as one comma-separated list, so a no-store on the second is not lost."""
    getall = getattr(headers, "getall", None)  # both servers' headers are a CIMultiDictProxy
    values = getall("Cache-Control", ()) if getall is not None else (headers.get("Cache-Control") or "",)
    return ", ".join(str(value) for value in values).lower()


def _max_age(control: str) -> float | None:
    match = _MAX_AGE.search(control)
    return float(match.group(1)) if match else None


def _reads(control: str, max_age: float | None) -> bool:
    """Whether a cached answer may be served: not with no-cache, nor with max-age=0 (HTTP's "no
    stored answer older than 0 s", a refresh as no-cache is; it was served any entry and stored
    its answer for the default TTL)."""
    return "no-cache" not in control and max_age != 0


def _answer(kind: str, raw: bytes, max_age_s: float | None = None) -> CachedAnswer | None:
    """The stored answer; None when it was stored longer ago than the request's max-age, or when
    it cannot be read (`_readable`)."""
    answer = _readable(kind, raw)
    return None if answer is None or _older(answer, max_age_s) else answer


def _older(answer: CachedAnswer, max_age_s: float | None) -> bool:
    """Stored longer ago than the request's max-age."""
    return max_age_s is not None and time.time() - answer.stored_at > max_age_s


def _readable(kind: str, raw: bytes) -> CachedAnswer | None:
    """The stored answer, or None when it cannot be read: a Redis shared with another version,
    or a corrupt value, is a miss (the fresh answer is stored over it), never a failed request."""
    try:
        data = orjson.loads(raw)
        stored_at = float(data.get("stored_at", 0))
        prompt, completion = data["usage"]
        body, model, provider = data["body"], data["model"], data["provider"]
        # Absent from entries stored before it was kept.
        read, write, write_1h, audio_in, audio_out = data.get("usage_parts") or (0, 0, 0, 0, 0)
        counts = (prompt, completion, read, write, write_1h, audio_in, audio_out)
        if not (
            isinstance(body, dict)
            and isinstance(model, str)
            and isinstance(provider, str)
            and all(type(n) is int for n in counts)
        ):
            raise ValueError("unexpected types")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
        log.warning("unreadable cache entry, treated as a miss: %r", exc)
        return None
    usage = Usage(
        prompt,
        completion,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        audio_prompt_tokens=audio_in,
        audio_completion_tokens=audio_out,
    )
    return CachedAnswer(kind, body, model, provider, usage, stored_at=stored_at)
