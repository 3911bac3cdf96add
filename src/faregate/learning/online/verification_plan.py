"""Which decisions get labelled, and with what probability: verifications spent where they decide.

A cut c sends ranks below it to the cheap path. The calibrator's question is always "how much
quality is lost below c, and below the next cuts up?"; the answer lives in the ranks just below
and just above the cut. Far above it, on the strong side, a label only refines the strong path's
own quality (a small term of the test). So the plan samples, per decision, with probability

    high                     for rank < c + frontier     (the cheap side and the band above the cut)
    high * rest_ratio        for rank >= c + frontier    (deep on the strong side)
    1                        for rank >= c, when the strong side is labelled for free (a cascade:
                             an escalated answer comes with the cheap one it replaced)

with `high` solved so that the expected share of decisions given a shadow call is `budget`
(capped at 1). A cheap decision's shadow call is to the strong model (paid); a strong decision's
is to the weak model (cheap: a few % of the strong call's price). The rates are fixed by the cut
in force *before* a decision arrives, and every rank keeps a positive rate, which is what the
calibrator's inverse-probability weights need to stay unbiased (learning/online/calibrator.py).

`pace` keeps the realised share of shadow calls just under the budget: a predictable multiplier
from the running count (it never reaches 0, so no rank ever becomes unlabelable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faregate.learning.online.betting import Array

# The pacing multiplier stays within these bounds; its memory, in decisions.
PACE_LIMITS = (0.1, 1.5)
PACE_MEMORY = 100.0
# The pace aims a little under the budget, so that chance leaves the realised share within it.
PACE_AIM = 0.98


@dataclass(slots=True, frozen=True)
class VerificationPlan:
    # Expected share of all decisions that get a shadow call (cheap or paid).
    budget: float
    # Width of the rank band above the cut sampled at the high rate (the next cuts to certify).
    frontier: float = 0.1
    # Sampling rate deep on the strong side, relative to the high rate (1.0: uniform sampling).
    rest_ratio: float = 0.1
    # Strong-side decisions are labelled for free (a cascade's escalations).
    free_strong_side: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"verification budget must be in (0, 1], got {self.budget}")
        if not 0.0 < self.rest_ratio <= 1.0 or not 0.0 <= self.frontier <= 1.0:
            raise ValueError("rest_ratio must be in (0, 1] and frontier in [0, 1]")

    def high_rate(self, cut: float, scale: float = 1.0) -> float:
        if self.free_strong_side:
            # Only the cheap side costs a shadow call; ranks at or above the cut are labelled anyway.
            paid = cut
        else:
            near = min(1.0, cut + self.frontier)
            paid = near + self.rest_ratio * (1.0 - near)
        if paid <= 0.0:
            return 1.0
        return float(min(1.0, self.budget * scale / paid))

    def probability(self, rank: float, cut: float, scale: float = 1.0) -> float:
        """The chance a decision at this rank is labelled, under the cut in force."""
        if self.free_strong_side and rank >= cut:
            return 1.0
        high = self.high_rate(cut, scale)
        return high if rank < cut + self.frontier else high * self.rest_ratio

    def paid(self, rank: float, cut: float) -> bool:
        """True when the label costs a shadow call (not a free escalation)."""
        return not (self.free_strong_side and rank >= cut)

    def least_probability(self, cut: float, scale: float = 1.0) -> float:
        """The least labelling probability of any rank under this cut."""
        return float(self.floor_probabilities(np.array([1.0]), cut, scale)[0])

    def floor_probabilities(self, cuts: Array, cut: float, scale: float = 1.0) -> Array:
        """For each candidate cut, the least labelling probability of any rank below it."""
        high = self.high_rate(cut, scale)
        deep = high * self.rest_ratio
        edge = cut + self.frontier
        below = np.where(cuts > edge + 1e-12, deep, high)
        if self.free_strong_side:
            # Ranks below `cut` are sampled at `high`; a candidate cut at or under it sees only those.
            below = np.where(cut > 0.0, high, 1.0) * np.ones_like(cuts)
        return np.asarray(below, dtype=np.float64)

    def dense(self, cuts: Array, cut: float) -> npt.NDArray[np.bool_]:
        """The candidate cuts below which every rank is sampled at the high rate (or for free)."""
        if self.free_strong_side or self.rest_ratio >= 1.0:
            return np.ones(len(cuts), dtype=bool)
        return np.asarray(cuts <= cut + self.frontier + 1e-12, dtype=bool)


def pace(budget: float, used: int, decisions: int) -> float:
    """A multiplier for the plan's rates that steers the realised shadow-call share to the budget."""
    aim = budget * PACE_AIM
    behind = aim * (decisions + PACE_MEMORY) - used
    low, high = PACE_LIMITS
    return float(min(max(behind / (budget * PACE_MEMORY), low), high))
