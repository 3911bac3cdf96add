"""The semantic cache: serve a cached answer to the same question asked in other words, and never
the answer to another question.

A hit needs all of: the same scope (tenant, resolved model or route, system prompt, tools), a
conversation of at most `max_turns` user turns, a text short enough to embed whole (and of at
most MAX_TEXT_CHARS characters), cosine
similarity at or above the threshold, and no objection from the near-miss guards. Each miss says
why, so the near misses can be counted and the threshold defended with numbers
(`faregate cache-eval`).

Embedding, search and guards all run on the embedder's single worker thread, in one hand-off per
lookup; the worker also owns the index, so the event loop never waits on them and the index needs
no lock.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from faregate.cache.guards import violation
from faregate.cache.semantic_index import IndexEntry, Scope, SemanticIndex, make_scope
from faregate.embedding.embedder import DIMENSIONS, AsyncEmbedder, Vector

P = TypeVar("P")

# Chosen by `faregate cache-eval` (evals/cache_eval/CACHE_EVAL.md): the best paraphrase recall (71%) with a
# false-hit rate under half the 0.5% bar on every distinct-question set (GSM8K 0.00%, MMLU 0.24%,
# half of those the same question retyped) and paraphrase precision of at least 97% (97.1%).
DEFAULT_THRESHOLD = 0.88
# Candidates checked per lookup: the best one may be refused by a guard while the next is the
# right answer ("episode 3" when both episode 1 and 3 are cached).
CANDIDATES = 4
# Candidates this far below the threshold are still reported, as "below_threshold", for tuning.
NEAR_MARGIN = 0.05
# A text longer than this is only cached exactly, whatever its tokens. The model's 256 tokens
# are at most a few thousand characters of any language; a longer text that still fits them is
# mostly whitespace or words the tokenizer does not know (a 2 MB blob of "a1a1..." is 4 tokens),
# and each entry keeps its text in memory: 50,000 such entries were 100 GB of one key's padding.
MAX_TEXT_CHARS = 8192

Status = Literal["hit", "miss", "skipped"]


class SemanticHit(NamedTuple, Generic[P]):
    entry: IndexEntry[P]
    similarity: float


@dataclass(slots=True, frozen=True)
class Rejection:
    """A near candidate that was not served, and why: "below_threshold" or a guard's name."""

    reason: str
    similarity: float
    candidate: str


@dataclass(slots=True)
class LookupResult(Generic[P]):
    """What one lookup did. `vector` is kept so a miss can be stored without embedding twice."""

    status: Status
    reason: str = ""
    entry: IndexEntry[P] | None = None
    similarity: float = 0.0
    rejections: tuple[Rejection, ...] = ()
    vector: Vector | None = None
    # With a calibrated acceptance (`floor` set): the best candidate the guards let through, served
    # or not, whose similarity the calibration counts and whose answer a label checks.
    candidate: SemanticHit[P] | None = None

    @property
    def hit(self) -> SemanticHit[P] | None:
        return SemanticHit(self.entry, self.similarity) if self.entry is not None else None


class SemanticCache(Generic[P]):
    """Payloads (answers) keyed by the meaning of a text, within a scope."""

    def __init__(
        self,
        embedder: AsyncEmbedder,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_turns: int = 1,
        max_entries: int = 50_000,
        ttl_s: float = 3600.0,
        candidates: int = CANDIDATES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self.max_turns = max_turns
        self.candidates = candidates
        self.embedder = embedder
        # Re-clustering a big scope must not stall the lookups queued behind it on the worker.
        self.index: SemanticIndex[P] = SemanticIndex(
            DIMENSIONS, max_entries=max_entries, ttl_s=ttl_s, clock=clock, cluster_in_background=True
        )
        self.outcomes: Counter[str] = Counter()
        # Set by a calibrated acceptance (quality/cache_live.py): candidates down to this similarity
        # are guard-checked and reported (`LookupResult.candidate`); `threshold` is then the one in
        # force, above 1 while nothing is certified.
        self.floor: float | None = None

    async def lookup(self, scope: Scope, text: str, *, turns: int = 1) -> SemanticHit[P] | None:
        """The cached entry answering `text` in `scope` and its similarity, or None."""
        return (await self.explain(scope, text, turns=turns)).hit

    async def explain(self, scope: Scope, text: str, *, turns: int = 1) -> LookupResult[P]:
        """Like lookup, with the reason for a miss and the near candidates that were refused."""
        skipped = self._skip_reason(text, turns)
        if skipped:
            return self._count(LookupResult(status="skipped", reason=skipped))
        # Embedding and search in one hand-off to the worker (each hand-off costs ~0.2 ms).
        found = await self.embedder.embed_then(text, lambda vector: self._find(scope, text, vector))
        if found is None:
            return self._count(LookupResult(status="skipped", reason="too_long"))
        return self._count(found)

    async def store(
        self,
        scope: Scope,
        text: str,
        payload: P,
        *,
        turns: int = 1,
        ttl_s: float | None = None,
        vector: Vector | None = None,
    ) -> IndexEntry[P] | None:
        """Cache `payload` as the answer to `text`; None when the text is not semantically cacheable.

        Pass the `vector` of the lookup that missed (LookupResult.vector) to skip embedding again.
        """
        if self._skip_reason(text, turns):
            return None
        if vector is None:
            return await self.embedder.embed_then(
                text, lambda embedded: self._insert(scope, text, embedded, payload, ttl_s)
            )
        return await self.embedder.call(self._insert, scope, text, vector, payload, ttl_s)

    async def store_shared(self, entries: Sequence[SharedEntry[P]]) -> int:
        """Add entries another instance cached (with their vectors) in one hand-off to the worker,
        not one each: a new instance reads tens of thousands from the shared stream, and each
        hand-off waits for the loop and the worker in turn. How many were kept."""
        kept = [e for e in entries if not self._skip_reason(e.text, 1)]
        if not kept:
            return 0
        return await self.embedder.call(self._insert_shared, kept)

    async def forget(self, entry: IndexEntry[P]) -> None:
        """Drop an entry (its answer is gone); nothing if it already left the index."""
        await self.embedder.call(self.index.remove, entry)

    def cacheable(self, text: str, turns: int) -> bool:
        """Whether `text` may be cached by meaning, as far as is known before it is embedded."""
        return not self._skip_reason(text, turns)

    def _skip_reason(self, text: str, turns: int) -> str:
        if turns > self.max_turns:
            return "too_many_turns"
        if not text.strip():
            return "empty"
        if len(text) > MAX_TEXT_CHARS:
            return "too_long"
        return ""

    def _count(self, result: LookupResult[P]) -> LookupResult[P]:
        self.outcomes[result.status if result.status == "hit" else f"{result.status}:{result.reason}"] += 1
        return result

    # The two methods below run on the embedder's worker thread only.

    def _find(self, scope: Scope, text: str, vector: Vector) -> LookupResult[P]:
        floor = self.threshold - NEAR_MARGIN if self.floor is None else min(self.floor, 1.0)
        found = self.index.search(scope, vector, k=self.candidates, min_score=floor)
        rejections: list[Rejection] = []
        candidate: SemanticHit[P] | None = None
        for entry, similarity in found:
            if similarity < self.threshold and self.floor is None:
                rejections.append(Rejection("below_threshold", similarity, entry.text))
                continue
            reason = violation(text, entry.text)
            if not reason and candidate is None:
                candidate = SemanticHit(entry, similarity)
            if not reason and similarity >= self.threshold:
                self.index.touch(entry)
                return LookupResult("hit", "", entry, similarity, tuple(rejections), vector, candidate)
            rejections.append(Rejection(reason or "below_threshold", similarity, entry.text))
        best = found[0][1] if found else 0.0
        reason = rejections[0].reason if rejections else "no_candidate"
        return LookupResult("miss", reason, None, best, tuple(rejections), vector, candidate)

    def _insert(
        self, scope: Scope, text: str, vector: Vector, payload: P, ttl_s: float | None
    ) -> IndexEntry[P]:
        # Storing the same text again replaces its entry instead of adding a twin (another text
        # with the same vector, the model being uncased, is another entry).
        twin = self.index.entry_of(scope, text)
        if twin is not None:
            self.index.remove(twin)
        return self.index.add(scope, vector, text, payload, ttl_s=ttl_s)

    def _insert_shared(self, entries: Sequence[SharedEntry[P]]) -> int:
        for entry in entries:
            self._insert(entry.scope, entry.text, entry.vector, entry.payload, entry.ttl_s)
        return len(entries)


class SharedEntry(NamedTuple, Generic[P]):
    """An entry another instance cached, as the shared stream carries it."""

    scope: Scope
    text: str
    payload: P
    ttl_s: float
    vector: Vector


# Before an assistant message's text in the embedded conversation.
ASSISTANT_MARK = "Assistant: "


def conversation_text(messages: Sequence[Mapping[str, Any]]) -> tuple[str, int] | None:
    """The text to embed for a chat request and its number of user turns.

    System and developer messages are left out: they are part of the scope, compared by hash.
    An assistant message is marked as one, so that a conversation with a prefilled or earlier
    answer never reads like one user message holding the same words (a lone user message, the
    usual case, is embedded as it is). None when the conversation is not plain text (images,
    audio, tool calls or results): those are only cached exactly.
    """
    parts: list[str] = []
    turns = 0
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant") or message.get("tool_calls") or message.get("function_call"):
            return None
        text = _plain_text(message.get("content"))
        if text is None:
            return None
        turns += role == "user"
        parts.append(text if role == "user" else ASSISTANT_MARK + text)
    return ("\n".join(parts), turns) if turns else None


def _plain_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None


def scope_for(tenant: str, route: str, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> Scope:
    """The scope of a chat request: its system and developer messages and tools, hashed, and the
    messages' fields beside role and content (a `name` says who speaks, DeepSeek's `prefix` makes
    an assistant message one to continue): the embedded text has only the words."""
    system: list[Any] = [
        [m.get("role"), m.get("content")] for m in messages if m.get("role") in ("system", "developer")
    ]
    # Null and empty ones ask nothing (an SDK's answer sent back as history has `refusal: null`).
    fields = [
        {k: v for k, v in m.items() if k not in ("role", "content") and v not in (None, "", [], {})}
        for m in messages
    ]
    if any(fields):  # only then, so that the scope of plain messages is what it always was
        system.append(["fields", fields])
    return make_scope(tenant, route, system or None, tools)
