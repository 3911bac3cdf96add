"""The strong-call share of a router or a cascade, set from verified outcomes within a quality target.

A decision has a score (router: need for the strong model; cascade judge: P(cheap answer wrong)),
turned into a rank: the score's quantile among recent scores (`ScoreRanks`). The route takes the
strong path (strong model / escalation) when rank >= 1 - share. The share is calibrated here.

Method (Learn-then-Test with fixed-sequence testing, Angelopoulos et al. 2021, over a grid of
shares, on exact binomial bounds). Each verified outcome is a uniform random sample of decisions
(sampling.py) and says, for that prompt, whether the cheap path's answer lost quality against the
reference (`loss`), or won (`gain`: recorded correctness only; a live comparator never knows the
reference is wrong). For a candidate share q, the cheap-path prompts are those with rank < 1 - q,
and the quality loss per request is E[(loss - gain) * cheap]. The target asks

    E[quality of the routed answer] >= target * E[quality of the strong path]

i.e. loss per request <= (1 - target) * E[reference quality]. Shares are tested from q = 1 (all
strong: no loss, always within) downwards in steps; each step passes when the Clopper-Pearson
upper bound of the loss per request (union with the lower bound of the reference quality) is
within the budget; the first step that fails stops the sequence and the last passing share is
used. With fewer than `min_verified` outcomes the share is 1: every request takes the strong path.

What holds: if verified outcomes are exchangeable with future traffic (i.i.d. requests, a fixed
mix), each calibration meets the target with probability >= confidence. What does not: bounds
recomputed as outcomes arrive are each valid at their own sample size, not simultaneously over
time; a drifting traffic mix is followed only as fast as the window of outcomes turns over; ranks
recorded under an earlier scorer are reused after the scorer has learned.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faregate.learning.online import bounds

SHARE_STEP = 0.01
DEFAULT_WINDOW = 5000
DEFAULT_RANK_WINDOW = 2000


@dataclass(slots=True, frozen=True)
class VerifiedOutcome:
    """One verified decision: its rank when decided, and how the cheap path fared against the reference."""

    rank: float
    loss: bool
    gain: bool = False
    reference_ok: bool = True

    def to_json(self) -> list[Any]:
        return [round(self.rank, 6), int(self.loss), int(self.gain), int(self.reference_ok)]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> VerifiedOutcome:
        return cls(float(row[0]), bool(row[1]), bool(row[2]), bool(row[3]))


@dataclass(slots=True)
class CalibrationState:
    """Shared per route: the window of verified outcomes and the share last calibrated."""

    outcomes: deque[VerifiedOutcome] = field(default_factory=lambda: deque(maxlen=DEFAULT_WINDOW))
    strong_share: float = 1.0
    verified_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "outcomes": [o.to_json() for o in self.outcomes],
            "strong_share": self.strong_share,
            "verified_total": self.verified_total,
            "window": self.outcomes.maxlen,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationState:
        outcomes = deque((VerifiedOutcome.from_json(r) for r in data["outcomes"]), maxlen=int(data["window"]))
        return cls(outcomes, float(data["strong_share"]), int(data["verified_total"]))


@dataclass(slots=True, frozen=True)
class Estimate:
    """What the dashboard shows for a route: the share in force and the quality it is expected to keep."""

    strong_share: float
    verified: int
    # Point estimate and lower confidence bound of (routed quality) / (strong path quality).
    relative_quality: float
    relative_quality_low: float


@dataclass(slots=True, frozen=True)
class ShareCalibrator:
    target: float
    confidence: float = 0.95
    min_verified: int = 30
    step: float = SHARE_STEP

    def observe(self, state: CalibrationState, outcome: VerifiedOutcome) -> None:
        state.outcomes.append(outcome)
        state.verified_total += 1

    def calibrate(self, state: CalibrationState) -> float:
        """Recompute and store the least strong-call share the evidence certifies."""
        state.strong_share = self.certified_share(list(state.outcomes))
        return state.strong_share

    def certified_share(self, outcomes: Sequence[VerifiedOutcome]) -> float:
        n = len(outcomes)
        if n < self.min_verified:
            return 1.0
        # Split the error: two thirds to the loss bound (itself a union of two), one third to the
        # reference quality's lower bound.
        loss_confidence = 1.0 - (1.0 - self.confidence) * 2.0 / 3.0
        quality_confidence = 1.0 - (1.0 - self.confidence) / 3.0
        reference = bounds.lower(sum(o.reference_ok for o in outcomes), n, quality_confidence)
        budget = (1.0 - self.target) * reference
        ranks = sorted(o.rank for o in outcomes)
        by_rank = sorted(outcomes, key=lambda o: o.rank)
        losses = [0]
        gains = [0]
        for o in by_rank:
            losses.append(losses[-1] + o.loss)
            gains.append(gains[-1] + o.gain)
        steps = round(1.0 / self.step)
        chosen = 1.0
        for k in range(steps, -1, -1):
            share = k / steps
            cheap = bisect.bisect_left(ranks, 1.0 - share - 1e-12)  # outcomes with rank < 1 - share
            if bounds.loss_upper(losses[cheap], gains[cheap], n, loss_confidence) > budget:
                break
            chosen = share
        return chosen

    def estimate(self, state: CalibrationState) -> Estimate:
        outcomes = list(state.outcomes)
        n = len(outcomes)
        if not n:
            return Estimate(state.strong_share, 0, 1.0, 0.0)
        cut = 1.0 - state.strong_share - 1e-12
        loss = sum(o.loss for o in outcomes if o.rank < cut)
        gain = sum(o.gain for o in outcomes if o.rank < cut)
        reference = sum(o.reference_ok for o in outcomes)
        point = 1.0 - (loss - gain) / reference if reference else 0.0
        low_reference = bounds.lower(reference, n, 1.0 - (1.0 - self.confidence) / 3.0)
        loss_high = bounds.loss_upper(loss, gain, n, 1.0 - (1.0 - self.confidence) * 2.0 / 3.0)
        low = 1.0 - loss_high / low_reference if low_reference > 0 else 0.0
        return Estimate(state.strong_share, n, point, max(0.0, low))


@dataclass(slots=True)
class ScoreRanks:
    """A score's quantile among the recent scores (0 = the most cheap-looking); a warm start from the
    scores recorded at training time until live scores fill the window."""

    recent: deque[float] = field(default_factory=lambda: deque(maxlen=DEFAULT_RANK_WINDOW))
    reference: list[float] = field(default_factory=list)
    _sorted: list[float] = field(default_factory=list)
    _dirty: bool = True
    min_live: int = 200

    def rank(self, score: float) -> float:
        """The share of recent scores below this one (ties count half). Does not record it."""
        pool = self._pool()
        if not pool:
            return 0.5
        below = bisect.bisect_left(pool, score)
        equal = bisect.bisect_right(pool, score) - below
        return (below + equal / 2.0) / len(pool)

    def record(self, score: float) -> None:
        self.recent.append(float(score))
        self._dirty = True

    def _pool(self) -> list[float]:
        if self._dirty:
            live = list(self.recent)
            self._sorted = sorted(live if len(live) >= self.min_live else live + list(self.reference))
            self._dirty = False
        return self._sorted

    def to_json(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "reference": self.reference,
            "window": self.recent.maxlen,
            "min_live": self.min_live,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreRanks:
        return cls(
            deque((float(v) for v in data["recent"]), maxlen=int(data["window"])),
            [float(v) for v in data["reference"]],
            min_live=int(data["min_live"]),
        )
