"""Anytime-valid evidence that a mean is below zero, by betting (one e-process per candidate).

Job: for a stream of observations Y_1, Y_2, ... whose conditional mean given the past is mu (the
same mu for every observation), accumulate evidence against H0: mu >= 0. A gambler starts with
wealth 1 and at each observation stakes a fraction lam_t >= 0, chosen from the past only
(predictable), on "Y will be negative":

    K_t = prod_{i <= t} (1 - lam_i * Y_i)

Under H0 each factor has conditional mean 1 - lam_i * mu <= 1, so K is a nonnegative
supermartingale starting at 1 and, by Ville's inequality, P(K_t >= 1/alpha at ANY t) <= alpha.
Declaring "mu < 0" whenever K_t >= 1/alpha is therefore valid at every time simultaneously: the
evidence can be looked at after every observation, for ever, without inflating the error (unlike a
fixed-sample bound recomputed as data arrive). This is the test-by-betting of Waudby-Smith & Ramdas
(2023, "Estimating means of bounded random variables by betting"), used for risk control as in
Learn-then-Test with e-values.

Invariants, enforced here:
- K stays positive: the stake is capped so that lam_i * (largest value Y_i can take) <= CAP < 1;
  the caller says what that largest value is for each observation (it is known before the
  observation: an inverse-probability weight is fixed by the sampling plan in force).
- Stakes are predictable: lam_i is computed from the counters *before* Y_i is added.

Stakes follow the growth-rate-adaptive plug-in (aGRAPA): lam = -m1 / m2 with m1, m2 running
estimates of E[Y] and E[Y^2] over all observations (zeros included), shrunk towards a starting
guess worth `prior_count` observations so the first bets are neither zero nor reckless. Any
predictable choice keeps validity; this one grows wealth near the optimal rate mu^2 / (2 E[Y^2]).

The cost of being anytime-valid: to reach 1/alpha the wealth needs about 2 log(1/alpha) / (mu^2 /
E[Y^2]) observations, against z_alpha^2 / (mu^2 / Var Y) for a fixed-sample normal test: about 2.2x
as many at alpha = 0.05, 4.5x at 0.2 (docs/quality-guarantee.md compares them on the replays).

Many tests run side by side (one per candidate cut); the state keeps vectors, one entry per test.
A test may start late: before it starts its wealth is 1 and nothing is recorded for it. Starting
at a time chosen from the past (a stopping time) keeps it a supermartingale, so this costs no
validity; it spares a test the early observations that carried huge inverse-probability weights
(labels drawn at a low rate while its cut was far from the one in force) and would have sunk its
wealth before its cut was ever in question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
# Largest share of wealth ever staked against the worst outcome (0.5 as in Waudby-Smith & Ramdas).
CAP = 0.5


@dataclass(slots=True)
class BettingTests:
    """Wealth and running moments of `size` parallel tests of H0: mean >= 0 (shared state)."""

    size: int
    log_wealth: Array = field(default_factory=lambda: np.zeros(0))
    sum_y: Array = field(default_factory=lambda: np.zeros(0))
    sum_y2: Array = field(default_factory=lambda: np.zeros(0))
    # Observations seen by each test since it started, zeros included (an unlabelled decision is
    # an observation of 0).
    count: Array = field(default_factory=lambda: np.zeros(0))
    started: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        for name in ("log_wealth", "sum_y", "sum_y2", "count"):
            if len(getattr(self, name)) == 0:
                setattr(self, name, np.zeros(self.size))
        if len(self.started) == 0:
            self.started = np.ones(self.size, dtype=bool)

    def start(self, which: npt.NDArray[np.bool_]) -> None:
        """Start the tests marked (those already started carry on)."""
        self.started |= which

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "log_wealth": [round(float(v), 9) for v in self.log_wealth],
            "sum_y": [float(v) for v in self.sum_y],
            "sum_y2": [float(v) for v in self.sum_y2],
            "count": [int(v) for v in self.count],
            "started": [bool(v) for v in self.started],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BettingTests:
        return cls(
            int(data["size"]),
            np.asarray(data["log_wealth"], dtype=np.float64),
            np.asarray(data["sum_y"], dtype=np.float64),
            np.asarray(data["sum_y2"], dtype=np.float64),
            np.asarray(data["count"], dtype=np.float64),
            np.asarray(data["started"], dtype=bool),
        )


@dataclass(slots=True, frozen=True)
class Bettor:
    """How stakes are chosen. `prior_mean` / `prior_second_moment` are the starting guesses of E[Y]
    and E[Y^2], worth `prior_count` observations (they only steer the bets, never the validity)."""

    prior_mean: float = -0.02
    prior_second_moment: float = 0.05
    prior_count: float = 50.0

    def stakes(self, tests: BettingTests, largest: Array) -> Array:
        """Predictable stakes for the next observation; `largest[j]` bounds Y for test j (> 0)."""
        n = tests.count + self.prior_count
        m1 = (tests.sum_y + self.prior_count * self.prior_mean) / n
        m2 = (tests.sum_y2 + self.prior_count * self.prior_second_moment) / n
        raw = np.where(m1 < 0, -m1 / np.maximum(m2, 1e-12), 0.0)
        return np.clip(raw, 0.0, CAP / np.maximum(largest, 1e-12))

    def observe(self, tests: BettingTests, y: Array, largest: Array) -> None:
        """One observation per started test: bet, then update the running moments."""
        on = tests.started
        if np.any((y > largest + 1e-9) & on):
            raise ValueError("an observation exceeds the bound given for it")
        lam = np.where(on, self.stakes(tests, largest), 0.0)
        tests.log_wealth += np.log1p(-lam * y)
        tests.sum_y += np.where(on, y, 0.0)
        tests.sum_y2 += np.where(on, y * y, 0.0)
        tests.count += on

    def observe_zeros(self, tests: BettingTests, count: int = 1) -> None:
        """Observations of 0 (decisions that were not labelled): wealth is unchanged."""
        tests.count += np.where(tests.started, count, 0)


def threshold(confidence: float) -> float:
    """log(1 / alpha): the log-wealth at which a test rejects."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return math.log(1.0 / (1.0 - confidence))


def first_failure(log_wealth: Sequence[float] | Array, confidence: float) -> int:
    """Fixed-sequence testing: the number of leading tests that all reject. Tested in a fixed
    order, the first true null must itself reject for any true null to be declared, so the chance
    of declaring any true null at any time stays <= alpha with no correction for multiplicity."""
    level = threshold(confidence)
    for j, value in enumerate(log_wealth):
        if value < level:
            return j
    return len(log_wealth)
