"""Measures the semantic cache, so its threshold is chosen from numbers (`faregate cache-eval`).

- False hits on distinct questions: every GSM8K and MMLU question goes into one cache (one
  scope, as one tenant's traffic would), then each is looked up against all the others
  (leave-one-out). Every question is different, so any hit is a wrong answer served.
- Precision and recall on a hand-labelled set of paraphrases and near-miss non-paraphrases
  (data/paraphrases.txt), over a range of thresholds, with and without the guards.
- Latency of embedding plus lookup per request, through the real async path, and memory per
  10,000 entries.

Embeddings of the data are cached on disk, keyed by model and texts, so a re-run takes seconds.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import re
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from faregate.cache.guards import violation
from faregate.cache.semantic import CANDIDATES, SemanticCache
from faregate.cache.semantic_index import Scope, SemanticIndex
from faregate.embedding.embedder import DIMENSIONS, MODEL_SHA256, AsyncEmbedder, Embedder, Vector

THRESHOLDS = tuple(round(0.70 + 0.01 * i, 2) for i in range(30))
# The bar for false hits on distinct questions. The threshold is chosen against half of
# it: false hits grow with the size of the cache, and production caches can be bigger than this one.
FALSE_HIT_BAR = 0.005
CHOICE_MARGIN = 0.5
MIN_PRECISION = 0.97
EVAL_SCOPE = Scope("eval-tenant", "eval-model")
Progress = Callable[[int, int], None]


@dataclass(slots=True, frozen=True)
class Pair:
    anchor: str
    other: str
    paraphrase: bool
    kind: str


def load_pairs(text: str | None = None) -> list[Pair]:
    """Pairs from the block format of data/paraphrases.txt (the packaged copy by default)."""
    if text is None:
        text = (
            resources.files("faregate.evals.cache_eval")
            .joinpath("data/paraphrases.txt")
            .read_text(encoding="utf-8")
        )
    pairs: list[Pair] = []
    anchor: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            anchor = None
        elif anchor is None:
            anchor = line
        elif line.startswith("="):
            pairs.append(Pair(anchor, line[1:].strip(), True, "paraphrase"))
        elif line.startswith("!"):
            kind, _, other = line[1:].partition(" ")
            pairs.append(Pair(anchor, other.strip(), False, kind))
        else:
            raise ValueError(f"paraphrases: line must start with '=' or '!': {line!r}")
    return pairs


def load_questions(data_dir: Path, limit: int | None = None) -> dict[str, list[str]]:
    """The distinct prompts of each set (exact duplicates dropped), at most `limit` per set."""
    csv.field_size_limit(1 << 30)
    sets = {"gsm8k": [data_dir / "gsm8k_responses.csv"], "mmlu": sorted((data_dir / "mmlu").glob("*.csv"))}
    seen: set[str] = set()
    result: dict[str, list[str]] = {}
    for name, files in sets.items():
        prompts: list[str] = []
        for path in files:
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    prompt = row["prompt"].strip()
                    if prompt and prompt not in seen:
                        seen.add(prompt)
                        prompts.append(prompt)
        if not prompts:
            raise FileNotFoundError(f"no prompts for {name} under {data_dir}")
        result[name] = prompts[:limit] if limit else prompts
    return result


def embed_cached(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path, progress: Progress | None = None
) -> Vector:
    """Unit vectors of texts, NaN rows for texts too long to embed whole; cached on disk."""
    digest = hashlib.sha256(f"{MODEL_SHA256}:{embedder.max_tokens}".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    path = cache_dir / f"embeddings-{digest.hexdigest()[:24]}.npy"
    if path.exists():
        cached: Vector = np.load(path)
        if cached.shape == (len(texts), DIMENSIONS):
            return cached
    vectors = np.full((len(texts), DIMENSIONS), np.nan, dtype=np.float32)
    step = 256
    for start in range(0, len(texts), step):
        for offset, vector in enumerate(embedder.embed_fitting(texts[start : start + step])):
            if vector is not None:
                vectors[start + offset] = vector
        if progress:
            progress(min(start + step, len(texts)), len(texts))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


@dataclass(slots=True)
class FalseHits:
    """Leave-one-out lookups of one set of distinct questions against the whole cache."""

    name: str
    questions: int
    too_long: int
    guarded: dict[float, int] = field(default_factory=dict)
    unguarded: dict[float, int] = field(default_factory=dict)
    # Guarded hits whose two questions differ only in case, spacing or punctuation: the data set
    # holds some questions twice, retyped. Still counted in `guarded`, to stay on the safe side.
    retyped: dict[float, int] = field(default_factory=dict)
    # (question, cached question, similarity) of each guarded false hit at `report_at`.
    examples: list[tuple[str, str, float]] = field(default_factory=list)
    # Lookups where a guard refused a candidate at or above `report_at`, by guard.
    refused: dict[str, int] = field(default_factory=dict)

    def rate(self, threshold: float, *, guards: bool = True) -> float:
        hits = (self.guarded if guards else self.unguarded)[threshold]
        return hits / self.questions if self.questions else 0.0


def false_hits(
    sets: dict[str, list[str]],
    vectors: dict[str, Vector],
    thresholds: Sequence[float] = THRESHOLDS,
    progress: Progress | None = None,
    report_at: float | None = None,
) -> dict[str, FalseHits]:
    """Fill one cache with every question of every set, then look each up against all the others."""
    index: SemanticIndex[str] = SemanticIndex(DIMENSIONS, max_entries=10**7, ttl_s=1e12)
    for name, texts in sets.items():
        for text, vector in zip(texts, vectors[name], strict=True):
            if not np.isnan(vector[0]):
                index.add(EVAL_SCOPE, vector, text, name)
    lowest = min(thresholds)
    report_at = lowest if report_at is None else report_at
    total, done = sum(len(t) for t in sets.values()), 0
    results: dict[str, FalseHits] = {}
    for name, texts in sets.items():
        eligible = [i for i, v in enumerate(vectors[name]) if not np.isnan(v[0])]
        result = FalseHits(name, len(eligible), len(texts) - len(eligible))
        result.guarded = dict.fromkeys(thresholds, 0)
        result.unguarded = dict.fromkeys(thresholds, 0)
        result.retyped = dict.fromkeys(thresholds, 0)
        for i in eligible:
            query = texts[i]
            found = index.search(EVAL_SCOPE, vectors[name][i], k=CANDIDATES + 1, min_score=lowest)
            others = [(e.text, s) for e, s in found if e.text != query][:CANDIDATES]
            verdicts = [(s, violation(query, text), text) for text, s in others]
            for reason in {v for s, v, _ in verdicts if v and s >= report_at}:
                result.refused[reason] = result.refused.get(reason, 0) + 1
            for t in thresholds:
                above = [(s, v, text) for s, v, text in verdicts if s >= t]
                result.unguarded[t] += bool(above)
                passed = [(s, text) for s, v, text in above if v is None]
                result.guarded[t] += bool(passed)
                result.retyped[t] += bool(passed) and _retyped(query, passed[0][1])
                if passed and t == report_at:
                    result.examples.append((query, passed[0][1], passed[0][0]))
            done += 1
            if progress and done % 500 == 0:
                progress(done, total)
        results[name] = result
    return results


def _retyped(a: str, b: str) -> bool:
    return _LETTERS_AND_DIGITS.sub("", a.lower()) == _LETTERS_AND_DIGITS.sub("", b.lower())


_LETTERS_AND_DIGITS = re.compile(r"[\W_]+")


@dataclass(slots=True, frozen=True)
class PairPoint:
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    tp_unguarded: int
    fp_unguarded: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def precision_unguarded(self) -> float:
        hits = self.tp_unguarded + self.fp_unguarded
        return self.tp_unguarded / hits if hits else 1.0

    @property
    def recall_unguarded(self) -> float:
        return self.tp_unguarded / (self.tp + self.fn) if self.tp + self.fn else 0.0


def pair_similarities(pairs: Sequence[Pair], vectors: dict[str, Vector]) -> list[float]:
    return [float(vectors[p.anchor] @ vectors[p.other]) for p in pairs]


def pair_curve(
    pairs: Sequence[Pair], sims: Sequence[float], thresholds: Iterable[float] = THRESHOLDS
) -> list[PairPoint]:
    """Each pair asks: would a cache holding the anchor serve it for the other text?"""
    allowed = [violation(p.other, p.anchor) is None for p in pairs]
    points = []
    for t in thresholds:
        tp = fp = fn = tn = tpu = fpu = 0
        for pair, sim, ok in zip(pairs, sims, allowed, strict=True):
            hit, hit_unguarded = sim >= t and ok, sim >= t
            tp += pair.paraphrase and hit
            fn += pair.paraphrase and not hit
            fp += not pair.paraphrase and hit
            tn += not pair.paraphrase and not hit
            tpu += pair.paraphrase and hit_unguarded
            fpu += not pair.paraphrase and hit_unguarded
        points.append(PairPoint(t, tp, fp, fn, tn, tpu, fpu))
    return points


def caught_by_kind(
    pairs: Sequence[Pair], sims: Sequence[float], threshold: float
) -> dict[str, tuple[int, int]]:
    """Per pitfall kind: (non-paraphrases served at this threshold, of how many)."""
    counts: dict[str, tuple[int, int]] = {}
    for pair, sim in zip(pairs, sims, strict=True):
        if pair.paraphrase:
            continue
        served = sim >= threshold and violation(pair.other, pair.anchor) is None
        wrong, total = counts.get(pair.kind, (0, 0))
        counts[pair.kind] = (wrong + served, total + 1)
    return counts


def choose_threshold(curves: dict[str, FalseHits], points: Sequence[PairPoint]) -> float | None:
    """The threshold with the best paraphrase recall among those meeting both bars: a false-hit rate
    under half of 0.5% on every distinct-question set, and paraphrase precision of at least 97%."""
    best: PairPoint | None = None
    for point in points:
        if all(c.rate(point.threshold) < FALSE_HIT_BAR * CHOICE_MARGIN for c in curves.values()) and (
            point.precision >= MIN_PRECISION
        ):
            if best is None or point.recall > best.recall:
                best = point
    return best.threshold if best else None


@dataclass(slots=True, frozen=True)
class Latency:
    name: str
    entries: int
    requests: int
    p50_ms: float
    p99_ms: float
    lookup_p50_ms: float


async def measure_latency(
    embedder: Embedder,
    fill: Sequence[tuple[str, Vector]],
    queries: dict[str, Sequence[str]],
    threshold: float,
    pad_to: int = 0,
) -> list[Latency]:
    """Time `explain` (embed + search + guards, one hand-off to the worker) per request, one
    request at a time, with the cache holding `fill` (plus random filler up to pad_to)."""
    cache: SemanticCache[str] = SemanticCache(AsyncEmbedder(embedder), threshold=threshold, max_entries=10**7)
    rng = np.random.default_rng(0)

    def load() -> None:
        for text, vector in fill:
            cache.index.add(EVAL_SCOPE, vector, text, "")
        while len(cache.index) < pad_to:
            filler = rng.standard_normal(DIMENSIONS).astype(np.float32)
            cache.index.add(EVAL_SCOPE, filler / np.linalg.norm(filler), "", "")
        cache.index.settle()

    await cache.embedder.call(load)
    results = []
    for name, texts in queries.items():
        totals, lookups = [], []
        for text in texts:
            start = time.perf_counter()
            result = await cache.explain(EVAL_SCOPE, text)
            done = time.perf_counter()
            if result.vector is None:
                continue
            totals.append(done - start)
            # The search and guards alone, in a hand-off of their own (not part of the total).
            await cache.embedder.call(cache._find, EVAL_SCOPE, text, result.vector)
            lookups.append(time.perf_counter() - done)
        results.append(
            Latency(
                name,
                len(cache.index),
                len(totals),
                float(np.percentile(totals, 50) * 1e3),
                float(np.percentile(totals, 99) * 1e3),
                float(np.percentile(lookups, 50) * 1e3),
            )
        )
    await cache.embedder.close()
    return results


def index_bytes_per_10k(fill: Sequence[tuple[str, Vector]]) -> int:
    """Bytes allocated by 10,000 index entries: vectors, entry objects, their texts (payloads excluded)."""
    source = list(zip(range(10_000), _cycle(fill), strict=False))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index: SemanticIndex[None] = SemanticIndex(DIMENSIONS, max_entries=10**7)
    for i, (text, vector) in source:
        # A fresh copy of each text, so its memory is traced like a request's would be.
        index.add(EVAL_SCOPE, vector, f"{text} #{i}", None)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return int(used)


def _cycle(items: Sequence[tuple[str, Vector]]) -> Iterable[tuple[str, Vector]]:
    while True:
        yield from items


def run_latency(
    embedder: Embedder,
    fill: Sequence[tuple[str, Vector]],
    queries: dict[str, Sequence[str]],
    threshold: float,
    pad_to: int = 0,
) -> list[Latency]:
    return asyncio.run(measure_latency(embedder, fill, queries, threshold, pad_to))
