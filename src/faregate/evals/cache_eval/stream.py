"""A stream of lookups replayed through the semantic cache with online acceptance
(`faregate cache-eval --pairs FILE`).

Labelled pairs (two texts, same question or not) become a stream: in a seeded order, each pair's
first text is looked up (and, missing, stored with its answer), then its second. Texts linked by
"same" labels form one class; a hit is right only when the cached entry is of the query's class.
Between pairs, `distinct` questions (texts of no pair, none of them in the index) are looked up
too: any hit on one is wrong. Before the stream the index holds `fill` entries of other texts (one
tenant's other traffic), so lookups meet a crowded index of the stated size.

Each lookup runs what the gateway runs: the index's nearest candidates, the near-miss guards, then
the online acceptance (learning/online/cache_acceptance.py): serve at or above the threshold in
force, unless a conflict was seen that close. A lookup not served is labelled for free (the fresh
answer is compared with the candidate's); a sampled share of served hits is verified by a fresh
call, counted as verification. The threshold is recalibrated after every label. Reported, per
window and overall: wrong hits / lookups (the rate the acceptance bounds), wrong hits / lookups
whose question had no answer in the cache yet ("novel"), wrong hits / served hits, the share of
true paraphrases served (lookups whose class was already cached, served a right answer), and
verification calls.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from faregate.cache.guards import violation
from faregate.cache.semantic import CANDIDATES
from faregate.cache.semantic_index import Scope, SemanticIndex
from faregate.learning.online.cache_acceptance import (
    AcceptanceState,
    CacheAcceptance,
    EntryEvidence,
    Neighbour,
)
from faregate.learning.online.sampling import coin

SCOPE = Scope("stream-tenant", "stream-model")
TEXT_COLUMNS = (
    ("text1", "text2"),
    ("question1", "question2"),
    ("sentence1", "sentence2"),
    ("anchor", "other"),
)
LABEL_COLUMNS = ("label", "same", "is_duplicate", "paraphrase")


@dataclass(slots=True, frozen=True)
class LabelledPair:
    first: str
    second: str
    same: bool


def load_labelled_pairs(path: Path) -> list[LabelledPair]:
    """CSV/TSV (columns text1,text2,label or question1,question2,is_duplicate ...), JSONL with the
    same keys, or the block format of evals/cache_eval/data/paraphrases.txt (.txt). utf-8-sig: a
    byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name."""
    try:
        return _load_labelled_pairs(path)
    except UnicodeDecodeError as exc:  # its own message names no file
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def _load_labelled_pairs(path: Path) -> list[LabelledPair]:
    if path.suffix == ".txt":
        from faregate.evals.cache_eval.measure import load_pairs

        try:
            blocks = load_pairs(path.read_text("utf-8-sig"))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not blocks:  # an empty stream has no vector to size the index by
            raise ValueError(f"{path}: no pairs")
        return [LabelledPair(p.anchor, p.other, p.paraphrase) for p in blocks]
    numbered: list[tuple[int, Any]]
    if path.suffix == ".jsonl":
        numbered = []
        for number, line in enumerate(path.read_text("utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
    else:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            numbered = list(enumerate(reader, 2))
    if not numbered:
        raise ValueError(f"{path}: no pairs")
    for number, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected an object with two texts and a label")
    keys = set(numbered[0][1])
    texts = next((c for c in TEXT_COLUMNS if set(c) <= keys), None)
    label = next((c for c in LABEL_COLUMNS if c in keys), None)
    if texts is None or label is None:
        raise ValueError(f"{path}: needs two text columns ({TEXT_COLUMNS}) and a label ({LABEL_COLUMNS})")
    # A JSONL row without the first row's keys, or a short CSV row (None cells), is named: not a
    # KeyError, nor the text "None".
    for number, row in numbered:
        missing = [c for c in (*texts, label) if row.get(c) is None]
        if missing:
            raise ValueError(f"{path}:{number}: no {', '.join(missing)}")
    return [
        LabelledPair(str(r[texts[0]]), str(r[texts[1]]), _same(r[label], f"{path}:{number}: {label}"))
        for number, r in numbered
    ]


_SAME = frozenset({"1", "true", "yes", "same", "1.0"})
_DIFFERENT = frozenset({"0", "false", "no", "different", "0.0"})


def _same(value: object, where: str) -> bool:
    # An unknown label is an error, not "different": every hit served for such a pair would be
    # counted a wrong hit, and the wrong-hit rates the replay reports would be made up.
    text = str(value).strip().lower()
    if text in _SAME:
        return True
    if text in _DIFFERENT:
        return False
    raise ValueError(f"{where} {value!r} is neither same (1, true, yes) nor different (0, false, no)")


@dataclass(slots=True)
class StreamWindow:
    start: int
    lookups: int = 0
    served: int = 0
    wrong: int = 0
    paraphrase_lookups: int = 0
    paraphrases_served: int = 0
    distinct_lookups: int = 0
    distinct_wrong: int = 0
    # Lookups whose question had no answer in the cache yet, and the wrong hits among them.
    novel_lookups: int = 0
    novel_wrong: int = 0
    verified: int = 0

    @property
    def wrong_hit_rate(self) -> float:
        return self.wrong / self.lookups if self.lookups else 0.0

    @property
    def novel_wrong_rate(self) -> float:
        return self.novel_wrong / self.novel_lookups if self.novel_lookups else 0.0

    @property
    def served_wrong_rate(self) -> float:
        return self.wrong / self.served if self.served else 0.0

    @property
    def paraphrase_share(self) -> float:
        return self.paraphrases_served / self.paraphrase_lookups if self.paraphrase_lookups else 0.0


class Traced(NamedTuple):
    """One lookup as a fixed threshold would see it: its best guard-passing candidate's similarity
    (-1: none), whether that candidate is a wrong answer, whether the lookup is a paraphrase of a
    cached question."""

    similarity: float
    wrong: bool
    paraphrase: bool


class Hindsight(NamedTuple):
    """The best single threshold chosen with every label of the stream (not deployable: a ceiling)."""

    threshold: float | None
    wrong_hit_rate: float
    paraphrase_share: float


@dataclass(slots=True)
class StreamReport:
    fill: int
    index_entries: int
    windows: list[StreamWindow]
    total: StreamWindow
    acceptance: CacheAcceptance
    state: AcceptanceState = field(default_factory=AcceptanceState)
    trace: list[Traced] = field(default_factory=list)


def hindsight(trace: Sequence[Traced], bound: float, floor: float = 0.80) -> Hindsight:
    """The threshold (on a 0.01 grid) serving the most paraphrases with wrong hits / lookups <= bound,
    had every candidate at or above it been served, on a stream replayed without serving."""
    lookups = max(1, len(trace))
    paraphrases = max(1, sum(t.paraphrase for t in trace))
    best = Hindsight(None, 0.0, 0.0)
    for step in range(round((1.0 - floor) / 0.01), -1, -1):
        tau = round(floor + step * 0.01, 6)
        above = [t for t in trace if t.similarity >= tau - 1e-9]
        rate = sum(t.wrong for t in above) / lookups
        if rate > bound:
            continue
        share = sum(t.paraphrase and not t.wrong for t in above) / paraphrases
        if share > best.paraphrase_share:
            best = Hindsight(tau, rate, share)
    return best


def _classes(pairs: Sequence[LabelledPair]) -> dict[str, int]:
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for p in pairs:
        root(p.first), root(p.second)
        if p.same:
            parent[root(p.first)] = root(p.second)
    roots: dict[str, int] = {}
    return {t: roots.setdefault(root(t), len(roots)) for t in parent}


def replay_stream(
    pairs: Sequence[LabelledPair],
    vectors: dict[str, np.ndarray],
    fill: Sequence[np.ndarray],
    distinct: Sequence[str],
    acceptance: CacheAcceptance,
    *,
    seed: int = 0,
    window: int = 500,
    verify_hits: float = 0.05,
    state: AcceptanceState | None = None,
    serve: bool = True,
) -> StreamReport:
    """Run the stream. `vectors` maps every pair and distinct text to its unit embedding; `fill` are
    vectors of other texts to pre-load (never a right answer to anything in the stream). With
    `serve` off nothing is served (every question is stored): the trace then shows what any fixed
    threshold would have done (`hindsight`)."""
    classes = _classes(pairs)
    index: SemanticIndex[int] = SemanticIndex(
        len(next(iter(vectors.values()))), max_entries=10**7, ttl_s=1e12
    )
    evidence: dict[int, EntryEvidence] = {}
    for vector in fill:
        index.add(SCOPE, vector, "", -1)
    state = state or AcceptanceState(floor=0.80)
    rng = np.random.default_rng(seed)
    order = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    pending = list(distinct)
    rng.shuffle(pending)
    per_pair = len(pending) / max(1, len(order))
    queries: list[tuple[str, int]] = []
    owed = 0.0
    for pair in order:
        queries += [(pair.first, classes[pair.first]), (pair.second, classes[pair.second])]
        owed += per_pair
        while owed >= 1 and pending:
            queries.append((pending.pop(), -2))
            owed -= 1
    seen: set[str] = set()
    cached_classes: set[int] = set()
    windows: list[StreamWindow] = []
    total = StreamWindow(0)
    lookup = 0
    trace: list[Traced] = []
    for text, cls in queries:
        if cls >= 0 and text in seen:
            continue
        seen.add(text)
        if lookup % window == 0:
            windows.append(StreamWindow(lookup))
        outcome = _lookup(
            index, evidence, state, acceptance, text, vectors[text], cls, seed, lookup, verify_hits, serve
        )
        served, wrong, verified, similarity, conflict = outcome
        paraphrase = cls >= 0 and cls in cached_classes
        trace.append(Traced(similarity if similarity is not None else -1.0, wrong, paraphrase))
        for w in (windows[-1], total):
            w.novel_lookups += not paraphrase
            w.novel_wrong += not paraphrase and served and wrong
            w.lookups += 1
            w.served += served
            w.wrong += served and wrong
            w.verified += verified
            w.paraphrase_lookups += paraphrase
            w.paraphrases_served += paraphrase and served and not wrong
            w.distinct_lookups += cls == -2
            w.distinct_wrong += cls == -2 and served
        if not served:
            entry = index.add(SCOPE, vectors[text], text, cls if cls >= 0 else -3 - lookup)
            # A conflict seen at this lookup marks both sides: the candidate and the new entry.
            evidence[id(entry)] = EntryEvidence(1, 0, conflict) if conflict is not None else EntryEvidence()
            if cls >= 0:
                cached_classes.add(cls)
        lookup += 1
    return StreamReport(len(fill), len(index), windows, total, acceptance, state, trace)


def _lookup(
    index: SemanticIndex[int],
    evidence: dict[int, EntryEvidence],
    state: AcceptanceState,
    acceptance: CacheAcceptance,
    text: str,
    vector: np.ndarray,
    cls: int,
    seed: int,
    lookup: int,
    verify_hits: float,
    serve: bool,
) -> tuple[bool, bool, bool, float | None, float | None]:
    """(served, wrong, verified by a fresh call, the best candidate's similarity, the similarity of a
    conflict labelled here) for one lookup."""
    found = index.search(SCOPE, vector, k=CANDIDATES, min_score=state.floor - 0.05)
    allowed = [(e, s) for e, s in found if e.text and violation(text, e.text) is None]
    candidates = [(e, s) for e, s in allowed if s >= state.floor]
    if not candidates:
        acceptance.record_lookup(state, None)
        return False, False, False, None, None
    best, similarity = candidates[0]
    acceptance.record_lookup(state, similarity)
    others = [Neighbour(s, evidence.get(id(e), EntryEvidence())) for e, s in found if e is not best]
    mine = evidence.setdefault(id(best), EntryEvidence())
    wrong = best.payload != cls or cls < 0
    if not serve:
        return False, wrong, False, similarity, None
    decision = acceptance.decide(state, Neighbour(similarity, mine), others)
    verified = decision.serve and coin(f"verify-{seed}", str(lookup)) < verify_hits
    if not decision.serve or verified:
        acceptance.observe(state, similarity, wrong, [mine])
        acceptance.calibrate(state)
        return decision.serve, wrong, verified, similarity, similarity if wrong else None
    return decision.serve, wrong, verified, similarity, None
