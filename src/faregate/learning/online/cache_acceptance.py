"""Semantic-cache hits served within a wrong-hit bound: one threshold, calibrated online by
Learn-then-Test on all the evidence at or above it; stricter only where conflicts were seen.

The policy: serve the best candidate that passes the near-miss guards when its similarity s is at
least the threshold tau in force, unless its neighbourhood has shown a conflict (below). The rate
bounded is vCache's: wrong answers served / all lookups,

    R(tau) = P(the lookup's best candidate has s >= tau and is not a right answer)

with every lookup in the denominator, those without any candidate included (they can never be a
wrong hit). Writing R(tau) = P(s >= tau) * P(wrong | s >= tau), both factors are bounded:

- P(s >= tau): every lookup's s is known, labelled or not: an exact binomial upper bound on the
  share of lookups at or above tau (a small part of the error budget, `share_error`);
- P(wrong | s >= tau): from *all* labelled lookups at or above tau, pooled (not per 0.01 band):
  a Clopper-Pearson upper bound of wrong / labelled among them.

With `method="direct"` the product is replaced by a sum: R(tau) = P(s >= tau, labelled, wrong) +
P(s >= tau, unlabelled, wrong). Every unserved lookup is labelled, so the first term is an exact
binomial count over all lookups; only the second (served hits not drawn for verification) needs the
pooled rate, as CP(unlabelled / lookups) x CP(pooled rate), the error budget split three ways.
A wrong label then costs about 1/N wherever it sits rather than 1/L(tau) of the few labels above a
high tau; the second term costs about 5/N even with no unlabelled lookup seen
(docs/quality-guarantee.md has both measured).

Learn-then-Test: tau is tested from 1.00 down in steps of 0.01 (fixed-sequence testing, no
multiplicity correction needed) and the lowest tau of the leading run with R_upper(tau) <= bound is
put in force; with too little evidence nothing passes and nothing is served (conservative until
evidence). Labels: a lookup not served is answered by a fresh call, and comparing that answer with
the candidate's labels it for free; a served hit is labelled only when sampled for verification
(a fresh call after the response). Lookups without a candidate at or above `floor` need no label.

Assumption behind pooling: the chance a candidate is wrong does not rise with similarity (what
makes a threshold the right policy at all). Labels are denser at low similarity (unserved lookups
are all labelled, served ones only when verified), so the pooled rate over-weights the riskier
bands: the bound errs on the safe side. Guarantee: if lookups are exchangeable and labels right,
each calibration's R_upper(tau) bounds R(tau) with probability >= confidence (fixed-sample,
Clopper-Pearson), or, with `sequential`, at every time at once (anytime-valid Beta-mixture bound,
bounds.mixture_upper; it needs about 3.5-5x the evidence). The guards and the conflict rule only
remove hits, so they keep it.

Conflicts (vCache's point that crowded regions need stricter thresholds): each cached entry keeps
`EntryEvidence`; a labelled lookup that matched an entry but was a different question records the
similarity of that conflict on it. A candidate is not served when it, or another candidate found
within `neighbourhood` of its similarity, has a conflict at or above s - `crowd_margin`: where
different questions have been seen to sit this close, a hit needs to be closer than they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from faregate.learning.online import bounds

BAND = 0.01
METHODS = ("product", "direct")


@dataclass(slots=True)
class EntryEvidence:
    """What labelled lookups said about one cached entry (stored beside it, shared with it)."""

    wrong: int = 0
    right: int = 0
    # The highest similarity at which a different question matched this entry; -1: none seen.
    conflict_similarity: float = -1.0

    def to_json(self) -> list[float]:
        return [self.wrong, self.right, round(self.conflict_similarity, 5)]

    @classmethod
    def from_json(cls, row: Sequence[float]) -> EntryEvidence:
        return cls(int(row[0]), int(row[1]), float(row[2]))


@dataclass(slots=True)
class AcceptanceState:
    """Evidence per similarity band (shared across instances), and the threshold in force."""

    floor: float = 0.80
    # Every lookup, with or without a candidate.
    lookups: int = 0
    # Per 0.01 band from `floor`: lookups whose best candidate fell there, labelled, wrong.
    seen: list[int] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    served: int = 0
    # None: no hit is served.
    threshold: float | None = None

    def __post_init__(self) -> None:
        bands = round((1.0 - self.floor) / BAND) + 1
        for name in ("seen", "labelled", "wrong"):
            if not getattr(self, name):
                setattr(self, name, [0] * bands)

    def band(self, similarity: float) -> int:
        return min(len(self.seen) - 1, max(0, int((similarity - self.floor) / BAND + 1e-9)))

    def edge(self, band: int) -> float:
        """The lowest similarity of a band: the threshold that serves it and every band above."""
        return round(self.floor + band * BAND, 6)

    def to_json(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "lookups": self.lookups,
            "seen": self.seen,
            "labelled": self.labelled,
            "wrong": self.wrong,
            "served": self.served,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AcceptanceState:
        threshold = data.get("threshold")
        return cls(
            float(data["floor"]),
            int(data["lookups"]),
            [int(v) for v in data["seen"]],
            [int(v) for v in data["labelled"]],
            [int(v) for v in data["wrong"]],
            int(data["served"]),
            None if threshold is None else float(threshold),
        )


class Neighbour(NamedTuple):
    """A candidate the index found for the lookup: its similarity and its evidence."""

    similarity: float
    evidence: EntryEvidence


class Decision(NamedTuple):
    serve: bool
    threshold: float | None
    reason: str


class Bound(NamedTuple):
    """R_upper(tau) and what it rests on. `product`: share_upper bounds P(s >= tau); `direct`: it
    bounds P(s >= tau, unlabelled) and counted_upper the labelled wrong hits per lookup."""

    upper: float
    share_upper: float
    wrong_upper: float
    labelled: int
    wrong: int
    counted_upper: float = 0.0


@dataclass(slots=True, frozen=True)
class CacheAcceptance:
    max_wrong_hit_rate: float = 0.005
    confidence: float = 0.95
    # Share of the error budget spent on the bound of P(s >= tau) (many lookups: little needed).
    share_error: float = 0.1
    # Anytime-valid bounds (a Beta-mixture confidence sequence) instead of fixed-sample ones.
    sequential: bool = False
    # "product": P(s >= tau) x P(wrong | s >= tau); "direct": labelled wrong hits counted over all
    # lookups, plus P(s >= tau, unlabelled) x P(wrong | s >= tau) for the unlabelled ones only.
    method: str = "product"
    # `direct`: share of the error budget spent on the pooled rate of the unlabelled term.
    rate_error: float = 0.1
    crowd_margin: float = 0.02
    # Other candidates this much less similar than the best one are not its neighbourhood.
    neighbourhood: float = 0.03

    def record_lookup(self, state: AcceptanceState, similarity: float | None) -> None:
        """Count a lookup and the similarity of its best guard-passing candidate (None: none)."""
        state.lookups += 1
        if similarity is not None and similarity >= state.floor:
            state.seen[state.band(similarity)] += 1

    def decide(self, state: AcceptanceState, candidate: Neighbour, others: Sequence[Neighbour]) -> Decision:
        """Serve `candidate` (the best one the guards let through)? `others`: the other candidates."""
        s = candidate.similarity
        if state.threshold is None:
            return Decision(False, None, "no threshold certified yet")
        if s < state.threshold:
            return Decision(False, state.threshold, "below the threshold")
        for near in (candidate, *others):
            if near.similarity < s - self.neighbourhood:
                continue
            if near.evidence.conflict_similarity >= s - self.crowd_margin:
                return Decision(False, state.threshold, "a conflict was seen this close")
        state.served += 1
        return Decision(True, state.threshold, "at or above the threshold")

    def observe(
        self, state: AcceptanceState, similarity: float, wrong: bool, entries: Sequence[EntryEvidence]
    ) -> None:
        """A labelled lookup: the candidate at this similarity was (not) a right answer. `entries`:
        the evidence of the candidate and of the entry stored for the lookup, if any."""
        if similarity < state.floor:
            return
        band = state.band(similarity)
        state.labelled[band] += 1
        state.wrong[band] += wrong
        for entry in entries:
            if wrong:
                entry.wrong += 1
                entry.conflict_similarity = max(entry.conflict_similarity, similarity)
            else:
                entry.right += 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def bound(self, state: AcceptanceState, threshold: float) -> Bound:
        """R_upper for serving every guard-passing candidate at or above `threshold`."""
        top = state.band(threshold)
        alpha = 1.0 - self.confidence
        if self.method == "direct":
            return self._direct(state, top, alpha)
        share = self._upper(sum(state.seen[top:]), state.lookups, 1.0 - alpha * self.share_error)
        n, k = sum(state.labelled[top:]), sum(state.wrong[top:])
        rate = self._upper(k, n, 1.0 - alpha * (1.0 - self.share_error))
        return Bound(share * rate, share, rate, n, k)

    def _direct(self, state: AcceptanceState, top: int, alpha: float) -> Bound:
        """R(tau) = P(s >= tau, labelled, wrong) + P(s >= tau, unlabelled, wrong): the first is an
        exact binomial count over all lookups (every unserved lookup is labelled), only the second,
        served hits not drawn for verification, needs the pooled rate. Error budget: share_error
        and rate_error to the two factors of the second term, the rest to the count."""
        n, k = sum(state.labelled[top:]), sum(state.wrong[top:])
        unlabelled = max(0, sum(state.seen[top:]) - n)
        counted_error = 1.0 - self.share_error - self.rate_error
        counted = self._upper(k, state.lookups, 1.0 - alpha * counted_error)
        share = self._upper(unlabelled, state.lookups, 1.0 - alpha * self.share_error)
        rate = self._upper(k, n, 1.0 - alpha * self.rate_error)
        return Bound(counted + share * rate, share, rate, n, k, counted)

    def calibrate(self, state: AcceptanceState) -> float | None:
        """Put in force the lowest threshold of the leading run (from 1.00 down) whose bound holds."""
        chosen: float | None = None
        for band in range(len(state.seen) - 1, -1, -1):
            if self.bound(state, state.edge(band)).upper > self.max_wrong_hit_rate:
                break
            chosen = state.edge(band)
        state.threshold = chosen
        return chosen

    def _upper(self, k: int, n: int, confidence: float) -> float:
        if self.sequential:
            return bounds.mixture_upper(k, n, confidence)
        return bounds.upper(k, n, confidence)
