"""A router that learns the deployment's own domains: the offline model as a prior, corrected by the
verified outcomes of the nearest past prompts.

The offline router's score estimates P(the weak model fails where the strong one succeeds) for a
prompt, learned on other data; on unfamiliar subjects it can be no better than chance. Every
verified outcome is a labelled example of *this* traffic: the prompt's embedding and the net gain
of the strong model on it (1: only the strong answer was acceptable, -1: only the cheap one, 0:
both or neither). A new prompt's score is the shrinkage (posterior-mean) estimate

    score = (m * (prior - mean gain of the weak model) + sum of neighbours' w * net gains) / (m + sum w)

over its k nearest labelled prompts by cosine similarity (those at least `min_similarity` alike),
where m is the prior's weight in pseudo-observations and w a neighbour's inverse labelling
probability relative to the average one (labels are drawn at rank-dependent rates; the weights
undo that, so a neighbourhood is not judged by the ranks that happened to be sampled most). With
no neighbours it is the prior; as a region of the embedding space (a subject, a product area)
accumulates labelled outcomes, its prompts are ranked by what was observed there. Scores rank
prompts; the calibrator decides how many go to the strong model. Re-ranking prompts while the
calibration's tests run is not covered by the guarantee: this score is used as a challenger,
switched in frozen by a test (ranking_switch.py).

State is a bounded list of (vector, net gain) examples; search is exact (a few thousand vectors),
on an `EvidenceView` of arrays built once per change and never written after, so the gateway can
search on a worker thread (quality/route_decisions.py) while the event loop adds examples.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
DEFAULT_MAX_EXAMPLES = 5000


@dataclass(slots=True)
class DomainEvidence:
    """Verified examples of this route's traffic (shared state)."""

    vectors: deque[Vector] = field(default_factory=lambda: deque(maxlen=DEFAULT_MAX_EXAMPLES))
    net_gains: deque[int] = field(default_factory=lambda: deque(maxlen=DEFAULT_MAX_EXAMPLES))
    # 1 / the probability each example had of being labelled.
    weights: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_MAX_EXAMPLES))
    # Each vector as float16, base64 (about 1 KB at 384 dimensions): encoded once, when added, so
    # that writing the state after every verification does not re-encode every example.
    encoded: deque[str] = field(default_factory=lambda: deque(maxlen=DEFAULT_MAX_EXAMPLES))
    weak_wins: float = 0.0
    total: float = 0.0
    # What scoring reads, built when first needed after a change (see `view`).
    _view: EvidenceView | None = None

    def add(self, vector: Vector, net_gain: int, weight: float = 1.0) -> None:
        if net_gain not in (-1, 0, 1):
            raise ValueError("net gain is -1, 0 or 1")
        if weight <= 0:
            raise ValueError("weight (1 / labelling probability) must be positive")
        # Kept at the precision it is stored at: every instance scores with the same numbers.
        half = np.asarray(vector, dtype=np.float32).astype("<f2")
        self.vectors.append(half.astype(np.float32))
        self.encoded.append(base64.b64encode(half.tobytes()).decode("ascii"))
        self.net_gains.append(net_gain)
        self.weights.append(float(weight))
        self.weak_wins += weight * (net_gain < 0)
        self.total += weight
        self._view = None

    def view(self) -> EvidenceView:
        """The evidence as scoring reads it (built now if it changed since)."""
        if self._view is None:
            self._view = EvidenceView.build(self.parts())
        return self._view

    def matrix(self) -> Vector:
        """The examples' vectors, one row each."""
        return self.view().matrix

    def parts(self) -> EvidenceParts:
        """The evidence as it is now, copied (references only): a worker thread may build its view
        while examples are added here (`view`, `keep`)."""
        return EvidenceParts(
            list(self.vectors), list(self.net_gains), list(self.weights), self.weak_wins, self.total
        )

    def built(self) -> EvidenceView | None:
        """The view, if it is built and current."""
        return self._view

    def keep(self, view: EvidenceView, parts: EvidenceParts) -> None:
        """Keep a view built elsewhere from `parts`, if nothing was added since."""
        if self._view is None and len(parts.vectors) == len(self.vectors) and parts.total == self.total:
            self._view = view

    def to_json(self) -> dict[str, Any]:
        return {
            "vectors_f16": list(self.encoded),
            "net_gains": list(self.net_gains),
            "weights": list(self.weights),
            "weak_wins": self.weak_wins,
            "total": self.total,
            "window": self.vectors.maxlen,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainEvidence:
        window = int(data["window"])
        encoded = [str(text) for text in data["vectors_f16"]]
        return cls(
            vectors=deque(_decode(encoded), maxlen=window),
            net_gains=deque((int(g) for g in data["net_gains"]), maxlen=window),
            weights=deque((float(w) for w in data["weights"]), maxlen=window),
            encoded=deque(encoded, maxlen=window),
            weak_wins=float(data["weak_wins"]),
            total=float(data["total"]),
        )


def _decode(encoded: list[str]) -> list[Vector]:
    """float16 base64 texts back to vectors; unpadded texts of one length decode in one go."""
    if not encoded:
        return []
    if len({len(t) for t in encoded}) == 1 and not encoded[0].endswith("="):
        halves = np.frombuffer(base64.b64decode("".join(encoded)), dtype="<f2")
        return list(halves.astype(np.float32).reshape(len(encoded), -1))
    return [np.frombuffer(base64.b64decode(t), dtype="<f2").astype(np.float32) for t in encoded]


@dataclass(slots=True, frozen=True)
class EvidenceParts:
    vectors: list[Vector]
    net_gains: list[int]
    weights: list[float]
    weak_wins: float
    total: float


@dataclass(slots=True, frozen=True)
class EvidenceView:
    """The evidence as arrays no one changes once built: scoring reads only these, so it may run on
    a worker thread while the event loop adds examples."""

    matrix: Vector
    net_gains: npt.NDArray[np.float64]
    # Each example's weight relative to the average one.
    weights: npt.NDArray[np.float64]
    # The weak model's weighted share of wins (the prior's shift).
    weak_share: float

    @classmethod
    def build(cls, parts: EvidenceParts) -> EvidenceView:
        n = len(parts.vectors)
        mean = sum(parts.weights) / n if n else 1.0
        return cls(
            np.stack(parts.vectors) if n else np.zeros((0, 0), np.float32),
            np.asarray(parts.net_gains, dtype=np.float64),
            np.asarray(parts.weights, dtype=np.float64) / mean,
            parts.weak_wins / parts.total if parts.total else 0.0,
        )


@dataclass(slots=True, frozen=True)
class DomainRouter:
    neighbours: int = 20
    prior_weight: float = 5.0
    min_similarity: float = 0.5

    def score(self, evidence: DomainEvidence, prior: float, vector: Vector) -> float:
        """The prompt's need for the strong model, the prior corrected by verified neighbours."""
        return self.score_view(evidence.view(), prior, vector)

    def score_view(self, view: EvidenceView, prior: float, vector: Vector) -> float:
        """`score` on a built view (any thread)."""
        base = prior - view.weak_share
        if not len(view.net_gains):
            return base
        sims = view.matrix @ np.asarray(vector, dtype=np.float32)
        k = min(self.neighbours, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        near = top[sims[top] >= self.min_similarity]
        if not len(near):
            return base
        gains = view.net_gains[near]
        weights = view.weights[near]
        return float((self.prior_weight * base + weights @ gains) / (self.prior_weight + weights.sum()))
