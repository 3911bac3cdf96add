"""Semantic-cache hits accepted online within a wrong-hit bound, vCache-style, stricter where crowded.

vCache (Schroeder et al., 2025) replaces the one similarity threshold by a decision per lookup
that keeps P(serving a wrong answer) under a user-set bound: it serves a candidate with a
probability chosen so that P(serve) * (upper bound of P(wrong)) <= bound, and every lookup it does
not serve is answered by a fresh call whose answer, compared with the candidate's, labels the
lookup for free. The same idea here, pooled so that a small index learns quickly:

- Global evidence by similarity band (0.01 wide, from `floor` to 1): labelled lookups and how many
  were wrong. The upper bound u of P(wrong) for a lookup at similarity s is the Clopper-Pearson
  bound over the band of s and the two bands below it (lower similarities are at least as risky
  if risk falls with similarity, so pooling downwards errs on the safe side).
- Local evidence per cached entry (`EntryEvidence`, kept with the entry): the similarity of the
  closest wrong match seen on it, and counts. When the candidate, or a neighbour nearly as close,
  has had a wrong match at a similarity within `crowd_margin` of this one, its own bound is taken
  too (u = max(u, local bound)): a crowded region of the index, where different questions sit
  close together, gets stricter, and only there.
- With fewer than `min_evidence` labelled lookups in the pooled bands there is no hit at all.
- The hit is served with probability min(1, bound / u) (a seeded coin per lookup); otherwise the
  fresh answer labels the lookup. A sampled share of served hits is verified by a fresh call after
  the response, and labels its band like any other lookup.

Guarantee, and its assumptions: for each lookup, P(served and wrong) <= P(serve) * P(wrong) <=
bound whenever u is a valid upper bound of P(wrong) for that lookup, which holds (with the stated
confidence per band) if lookups are exchangeable and the verification labels are right; the
near-miss guards only remove hits, so they keep it. Served lookups are labelled less often than
unserved ones and are the locally safer ones, which biases the bands' estimates upwards: the
conservative side. Not covered: drift faster than the bands turn over (bands keep every label
since start; a deployment should age them), and errors of the comparator that labels a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from faregate.learning.online import bounds

BAND = 0.01
POOLED_BANDS = 3


@dataclass(slots=True)
class EntryEvidence:
    """What verified lookups said about one cached entry (stored beside it, shared with it)."""

    wrong: int = 0
    right: int = 0
    # The highest similarity at which a different question matched this entry; -1: none seen.
    wrong_similarity: float = -1.0

    def to_json(self) -> list[float]:
        return [self.wrong, self.right, round(self.wrong_similarity, 5)]

    @classmethod
    def from_json(cls, row: Sequence[float]) -> EntryEvidence:
        return cls(int(row[0]), int(row[1]), float(row[2]))


@dataclass(slots=True)
class AcceptanceState:
    """Global evidence per similarity band (shared across instances) and what was decided."""

    floor: float = 0.80
    labelled: list[int] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    lookups: int = 0
    served: int = 0

    def __post_init__(self) -> None:
        bands = round((1.0 - self.floor) / BAND) + 1
        if not self.labelled:
            self.labelled = [0] * bands
            self.wrong = [0] * bands

    def band(self, similarity: float) -> int:
        return min(len(self.labelled) - 1, max(0, int((similarity - self.floor) / BAND + 1e-9)))

    def to_json(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "labelled": self.labelled,
            "wrong": self.wrong,
            "lookups": self.lookups,
            "served": self.served,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AcceptanceState:
        return cls(
            float(data["floor"]),
            [int(v) for v in data["labelled"]],
            [int(v) for v in data["wrong"]],
            int(data["lookups"]),
            int(data["served"]),
        )


class Neighbour(NamedTuple):
    """A candidate the index found for the lookup: its similarity and its evidence."""

    similarity: float
    evidence: EntryEvidence


class Decision(NamedTuple):
    serve: bool
    probability: float
    upper: float
    reason: str


@dataclass(slots=True, frozen=True)
class CacheAcceptance:
    max_wrong_hit_rate: float = 0.005
    confidence: float = 0.95
    min_evidence: int = 30
    crowd_margin: float = 0.03
    # Neighbours this much less similar than the candidate do not count as its neighbourhood.
    neighbourhood: float = 0.05

    def upper_bound(self, state: AcceptanceState, similarity: float) -> tuple[float, int]:
        """(upper bound of P(wrong) at this similarity, labelled lookups it rests on)."""
        top = state.band(similarity)
        low = max(0, top - POOLED_BANDS + 1)
        n = sum(state.labelled[low : top + 1])
        k = sum(state.wrong[low : top + 1])
        return bounds.upper(k, n, self.confidence), n

    def decide(
        self,
        state: AcceptanceState,
        candidate: Neighbour,
        others: Sequence[Neighbour],
        coin: float,
    ) -> Decision:
        """Serve `candidate` (the best one the guards let through)? `others` are the other candidates
        found; `coin` is uniform in [0, 1) and fixed per lookup (sampling.coin)."""
        state.lookups += 1
        s = candidate.similarity
        if s < state.floor:
            return Decision(False, 0.0, 1.0, "below floor")
        upper, evidence = self.upper_bound(state, s)
        if evidence < self.min_evidence:
            return Decision(False, 0.0, upper, f"too little evidence ({evidence} labelled lookups)")
        reason = "band bound"
        for near in (candidate, *others):
            if near.similarity < s - self.neighbourhood:
                continue
            seen = near.evidence
            if seen.wrong and seen.wrong_similarity >= s - self.crowd_margin:
                local = bounds.upper(seen.wrong, seen.wrong + seen.right, self.confidence)
                if local > upper:
                    upper, reason = local, "crowded neighbourhood"
        probability = min(1.0, self.max_wrong_hit_rate / upper) if upper > 0 else 1.0
        serve = coin < probability
        state.served += serve
        return Decision(serve, probability, upper, reason)

    def observe(
        self, state: AcceptanceState, similarity: float, wrong: bool, entries: Sequence[EntryEvidence]
    ) -> None:
        """A labelled lookup: the candidate at this similarity was (not) a right answer. `entries`
        are the evidence of the candidate and of the new entry stored for the lookup, if any."""
        if similarity < state.floor:
            return
        band = state.band(similarity)
        state.labelled[band] += 1
        state.wrong[band] += wrong
        for entry in entries:
            if wrong:
                entry.wrong += 1
                entry.wrong_similarity = max(entry.wrong_similarity, similarity)
            else:
                entry.right += 1
