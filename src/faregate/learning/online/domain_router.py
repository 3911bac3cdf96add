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

State is a bounded list of (vector, net gain) examples; search is exact (a few thousand vectors).
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
    _matrix: Vector | None = None
    _mean_weight: float | None = None

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
        self._matrix = None
        self._mean_weight = None

    def mean_weight(self) -> float:
        if self._mean_weight is None:
            self._mean_weight = sum(self.weights) / len(self.weights) if self.weights else 1.0
        return self._mean_weight

    def matrix(self) -> Vector:
        if self._matrix is None:
            self._matrix = np.stack(list(self.vectors)) if self.vectors else np.zeros((0, 0), np.float32)
        return self._matrix

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
class DomainRouter:
    neighbours: int = 20
    prior_weight: float = 5.0
    min_similarity: float = 0.5

    def score(self, evidence: DomainEvidence, prior: float, vector: Vector) -> float:
        """The prompt's need for the strong model, the prior corrected by verified neighbours."""
        base = prior - (evidence.weak_wins / evidence.total if evidence.total else 0.0)
        if not evidence.vectors:
            return base
        sims = evidence.matrix() @ np.asarray(vector, dtype=np.float32)
        k = min(self.neighbours, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        near = top[sims[top] >= self.min_similarity]
        if not len(near):
            return base
        gains = np.fromiter((evidence.net_gains[int(i)] for i in near), dtype=np.float64, count=len(near))
        weights = np.fromiter((evidence.weights[int(i)] for i in near), dtype=np.float64, count=len(near))
        weights /= evidence.mean_weight()  # relative to the average weight
        return float((self.prior_weight * base + weights @ gains) / (self.prior_weight + weights.sum()))
