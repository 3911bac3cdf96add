"""The strong-call share of a router or a cascade, set from labelled decisions within a quality target.

A decision has a score (router: need for the strong model; cascade judge: P(cheap answer wrong)),
turned into a rank: the score's quantile among recent scores (`ScoreRanks`), so ranks are
uniform on [0, 1) and the share of traffic below a cut c is c. The route takes the cheap path
(weak model / accept the cheap answer) when rank < c, the *cut*; the strong-call share is 1 - c.

Labels. Some decisions are labelled: both answers are known and compared. A label is *free* when
both answers exist anyway (a cascade escalation), *cheap* when it costs a shadow call to the weak
model (a router decision that went to the strong model), *paid* when it costs a shadow call to the
strong model (a cheap decision). Each labelled decision carries the probability `p` with which it
was going to be labelled, fixed by the sampling plan in force before it arrived
(verification_plan.py); p may depend on the rank, and be 1 (free labels).

What is tested. For a cut c and target t, with d = 1 if only the strong answer was acceptable,
-1 if only the cheap one, 0 otherwise, and s = 1 if the strong answer was acceptable:

    E[d * (rank < c)]  <=  (1 - t) * E[s]        (routed quality >= t * strong-path quality)

i.e. E[Z_c] <= 0 with Z_c = d * (rank < c) - (1 - t) * s. Every decision, labelled or not, gives
the unbiased estimate Y_c = Z_c * labelled / p (inverse-probability weighting; 0 if unlabelled).
One betting e-process per cut (betting.py) tests H0: E[Z_c] >= 0; cuts are tested in a fixed
order from c = step upwards (Learn-then-Test's fixed-sequence testing) and the certified cut is
the last of the leading run whose wealth reached 1/alpha. A live comparator knows no gains and
takes the reference as the standard: d in {0, 1}, s = 1, and the target reads "agree with the
strong path at least t of the time".

Guarantee (docs/quality-guarantee.md): if decisions are i.i.d. draws from a fixed traffic mix and
the rank map is fixed, then with probability >= confidence no cut that breaks the target is ever
certified, at any time (anytime-valid: the bound may be re-read after every decision). Labels at
rank-dependent rates (stratified sampling, free labels) keep this, since p is known per decision.
Prior pseudo-outcomes (prior.py), if used, enter as labelled decisions with p = 1 and weaken the
guarantee to "valid for the prior's traffic mixed with the live one".
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from faregate.learning.online.betting import Array, BettingTests, Bettor, first_failure

SHARE_STEP = 0.01
DEFAULT_RANK_WINDOW = 2000
RECENT_LABELS = 2000


@dataclass(slots=True, frozen=True)
class LabelledDecision:
    """One labelled decision: its rank when decided, how the cheap path fared against the reference,
    and the probability it had of being labelled."""

    rank: float
    loss: bool
    gain: bool = False
    reference_ok: bool = True
    probability: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"labelling probability must be in (0, 1], got {self.probability}")
        if self.loss and (self.gain or not self.reference_ok):
            raise ValueError("a loss means the reference was acceptable and the cheap answer not")

    @property
    def net_gain(self) -> int:
        return int(self.loss) - int(self.gain)

    def to_json(self) -> list[Any]:
        return [round(self.rank, 6), int(self.loss), int(self.gain), int(self.reference_ok), self.probability]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> LabelledDecision:
        return cls(float(row[0]), bool(row[1]), bool(row[2]), bool(row[3]), float(row[4]))


@dataclass(slots=True)
class CalibrationState:
    """Shared per route: one betting test per cut, the cut in force, counters."""

    tests: BettingTests
    cheap_share: float = 0.0
    labelled: int = 0
    decisions: int = 0
    # Per cut, since its test started: sum of s / p over labelled decisions (with tests.sum_y it
    # gives the loss estimate per cut).
    reference_sum: Array = field(default_factory=lambda: np.zeros(0))
    recent: deque[LabelledDecision] = field(default_factory=lambda: deque(maxlen=RECENT_LABELS))

    @property
    def strong_share(self) -> float:
        return 1.0 - self.cheap_share

    def to_json(self) -> dict[str, Any]:
        return {
            "tests": self.tests.to_json(),
            "cheap_share": self.cheap_share,
            "labelled": self.labelled,
            "decisions": self.decisions,
            "reference_sum": [float(v) for v in self.reference_sum],
            "recent": [d.to_json() for d in self.recent],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibrationState:
        return cls(
            BettingTests.from_json(data["tests"]),
            float(data["cheap_share"]),
            int(data["labelled"]),
            int(data["decisions"]),
            np.asarray(data["reference_sum"], dtype=np.float64),
            deque((LabelledDecision.from_json(r) for r in data["recent"]), maxlen=RECENT_LABELS),
        )


@dataclass(slots=True, frozen=True)
class Estimate:
    """What the dashboard shows for a route at the cut in force."""

    strong_share: float
    labelled: int
    decisions: int
    # Inverse-probability-weighted estimate of (routed quality) / (strong path quality).
    relative_quality: float
    # The e-value of the cut in force (>= 1/alpha: certified); 1.0 when all traffic is strong.
    evidence: float


@dataclass(slots=True, frozen=True)
class ShareCalibrator:
    target: float
    confidence: float = 0.95
    step: float = SHARE_STEP
    bettor: Bettor = field(default_factory=Bettor)

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be in (0, 1], got {self.target}")

    @property
    def cuts(self) -> Array:
        """The candidate cheap shares, in testing order."""
        steps = round(1.0 / self.step)
        return np.arange(1, steps + 1, dtype=np.float64) / steps

    def new_state(self) -> CalibrationState:
        size = len(self.cuts)
        return CalibrationState(
            BettingTests(size, started=np.zeros(size, dtype=bool)), reference_sum=np.zeros(size)
        )

    def start_tests(self, state: CalibrationState, which: npt.NDArray[np.bool_]) -> None:
        """Start testing the cuts marked (the plan's densely sampled ones; betting.py says why a
        test may start late)."""
        state.tests.start(np.asarray(which, dtype=bool))

    def observe(self, state: CalibrationState, decision: LabelledDecision, floor_probability: Array) -> None:
        """A labelled decision. `floor_probability[j]`: the least labelling probability the plan in
        force gave any rank below cut j (it bounds the weight a loss there can carry)."""
        cuts = self.cuts
        budget = 1.0 - self.target
        z = np.where(decision.rank < cuts - 1e-12, float(decision.net_gain), 0.0)
        z -= budget * decision.reference_ok
        largest = (1.0 - budget) / np.maximum(np.asarray(floor_probability, dtype=np.float64), 1e-9)
        self.bettor.observe(state.tests, z / decision.probability, largest)
        state.labelled += 1
        state.decisions += 1
        state.reference_sum += np.where(
            state.tests.started, decision.reference_ok / decision.probability, 0.0
        )
        state.recent.append(decision)

    def observe_unlabelled(self, state: CalibrationState, count: int = 1) -> None:
        self.bettor.observe_zeros(state.tests, count)
        state.decisions += count

    def calibrate(self, state: CalibrationState) -> float:
        """Recompute the certified cheap share and store it; returns the strong-call share."""
        state.cheap_share = self.certified_cheap_share(state)
        return state.strong_share

    def certified_cheap_share(self, state: CalibrationState) -> float:
        passed = first_failure(state.tests.log_wealth, self.confidence)
        return float(self.cuts[passed - 1]) if passed else 0.0

    def estimate(self, state: CalibrationState) -> Estimate:
        j = int(np.searchsorted(self.cuts, state.cheap_share - 1e-9))
        if state.cheap_share <= 0.0 or j >= len(self.cuts):
            return Estimate(state.strong_share, state.labelled, state.decisions, 1.0, 1.0)
        reference = float(state.reference_sum[j])
        loss = float(state.tests.sum_y[j]) + (1.0 - self.target) * reference
        quality = 1.0 - loss / reference if reference > 0 else 0.0
        evidence = float(np.exp(min(state.tests.log_wealth[j], 700.0)))
        return Estimate(state.strong_share, state.labelled, state.decisions, quality, evidence)


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
        score = float(score)
        if not self._dirty and len(self.recent) >= self.min_live:
            # The pool is the live window, kept sorted in place: no re-sort per decision (the
            # gateway ranks every request on the event loop).
            if len(self.recent) == self.recent.maxlen:
                del self._sorted[bisect.bisect_left(self._sorted, self.recent[0])]
            self.recent.append(score)
            bisect.insort(self._sorted, score)
            return
        self.recent.append(score)
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
