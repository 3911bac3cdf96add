"""Is the router earning its keep? A check of its live ranking against random and the length baseline.

A router is worth its scoring only if the prompts it ranks high are the ones where the strong
model's answer is better. The ranking's worth is the covariance between rank and net gain,
E[net_gain * (rank - 1/2)]: a random ranking scores 0; a ranking by prompt length scores whatever
length is worth here. Per decision the router's margin over a baseline is
v = net_gain * (rank_router - rank_baseline), in [-1, 1], known only on labelled decisions;
labels are drawn at rank-dependent rates (verification_plan.py), so every decision contributes
the inverse-probability-weighted Y = v * labelled / p, unbiased for the traffic's mean margin.

The check is a betting test per baseline (betting.py) of H0: "the router is at least as good"
(E[v] >= 0); the router is flagged when the evidence against it reaches 1/alpha. Being
anytime-valid, it can be read after every label: a router that is in fact no worse than a
baseline is flagged by that baseline's test, at any time, with probability <= alpha (a
normal-approximation bound recomputed after each label would raise false alarms far more often);
with two baselines a router no worse than either may be flagged by one or the other with
probability up to 2 alpha (simulated: 0.15 at alpha 0.2, 0.04 at 0.05). A false flag costs
savings (the length ranking), not the quality target. Until `min_outcomes` are
labelled nothing is flagged. What a flag should do (fall back to the baseline policy, restart the
calibration of the new ranking) is the route's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faregate.learning.online.betting import BettingTests, Bettor, threshold

BASELINES = ("random", "length")


@dataclass(slots=True)
class HealthState:
    tests: BettingTests = field(default_factory=lambda: BettingTests(len(BASELINES)))
    labelled: int = 0
    # Inverse-probability-weighted sums of the margins (the dashboard's point estimates).
    decisions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"tests": self.tests.to_json(), "labelled": self.labelled, "decisions": self.decisions}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HealthState:
        return cls(BettingTests.from_json(data["tests"]), int(data["labelled"]), int(data["decisions"]))


@dataclass(slots=True, frozen=True)
class Margin:
    baseline: str
    # Inverse-probability-weighted mean margin per decision, and the evidence (e-value) it is < 0.
    mean: float
    evidence: float
    outcomes: int


@dataclass(slots=True, frozen=True)
class Verdict:
    flagged: bool
    reason: str
    margins: tuple[Margin, ...]


@dataclass(slots=True, frozen=True)
class RouterHealth:
    confidence: float = 0.95
    min_outcomes: int = 100
    # Margins are small (a few hundredths): the bets start from that scale.
    bettor: Bettor = field(default_factory=lambda: Bettor(-0.01, 0.02, 50.0))

    def observe(
        self,
        state: HealthState,
        net_gain: int,
        router_rank: float,
        length_rank: float,
        probability: float,
        floor_probability: float,
    ) -> None:
        """A labelled decision, labelled with `probability`; `floor_probability` is the least
        labelling probability the plan in force gave any rank (it caps the stakes, which must not
        depend on this decision's own rank)."""
        if not 0.0 < floor_probability <= probability <= 1.0:
            raise ValueError("need 0 < floor_probability <= probability <= 1")
        margins = np.array([net_gain * (router_rank - 0.5), net_gain * (router_rank - length_rank)])
        # |v| <= 1 whatever the ranks, so one weighted observation is at most 1 / floor.
        self.bettor.observe(state.tests, margins / probability, np.full(2, 1.0 / floor_probability))
        state.labelled += 1
        state.decisions += 1

    def observe_unlabelled(self, state: HealthState, count: int = 1) -> None:
        self.bettor.observe_zeros(state.tests, count)
        state.decisions += count

    def margins(self, state: HealthState) -> tuple[Margin, ...]:
        return tuple(
            Margin(
                name,
                float(state.tests.sum_y[j]) / max(1.0, float(state.tests.count[j])),
                _e(state.tests.log_wealth[j]),
                state.labelled,
            )
            for j, name in enumerate(BASELINES)
        )

    def verdict(self, state: HealthState) -> Verdict:
        margins = self.margins(state)
        if state.labelled < self.min_outcomes:
            seen = f"{state.labelled} labelled decisions, fewer than {self.min_outcomes}"
            return Verdict(False, seen, margins)
        level = threshold(self.confidence)
        worse = [m.baseline for m in margins if np.log(m.evidence) >= level]
        if worse:
            return Verdict(True, f"worse than {' and '.join(worse)} on live evidence", margins)
        return Verdict(False, "not shown worse than random or length", margins)


def _e(log_wealth: float) -> float:
    return float(np.exp(min(float(log_wealth), 700.0)))
