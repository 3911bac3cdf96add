"""Learning the deployment's domains without moving the ranking under the calibration: a challenger
ranking, switched in only when an anytime-valid test shows it ranks better.

Two rankings run side by side:

- **the ranking in force** decides and is what the calibration's cuts are about. It is fixed
  within an epoch: the offline prior's score, or the prior corrected by a *frozen* snapshot of the
  domain evidence (domain_router.py), taken at the moment of a switch;
- **the challenger**: the prior corrected by the live evidence (every labelled decision so far, past
  labels only), scored and ranked at decision time beside the ranking in force, never deciding.

Per labelled decision the challenger's margin is v = net_gain * (rank_in_force - rank_challenger)
in [-1, 1] (a better ranking puts the prompts where the strong model's answer is better higher),
weighted Y = v / p with the decision's labelling probability p (inverse-probability weighting, as
health.py: unbiased for the traffic's mean margin whatever the plan). One betting e-process
(betting.py) tests H0: "the challenger ranks no better than the ranking in force", E[v | past] >= 0
at every step (the challenger may change from one decision to the next, but only with past labels:
the null is composite and the wealth a supermartingale under every part of it). It starts once the
evidence holds `min_labels` labels (a stopping time: no validity lost). When the wealth reaches
1/alpha the challenger wins: it is frozen (its evidence copied) and becomes the ranking in force;
the caller starts a new epoch and restarts the calibration (evidence about one ranking's cuts says
nothing of another's) and the health check, as the health fallback does. The test starts afresh
against the new ranking in force; the still-learning challenger may win again later.

What the guarantee gains: within an epoch the ranking is fixed, so the calibration's statement
(calibrator.py) holds epoch by epoch; a switch happens at a false alarm (the challenger is in fact
no better) with probability <= alpha per test.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from faregate.learning.online.betting import BettingTests, Bettor, threshold
from faregate.learning.online.calibrator import ScoreRanks
from faregate.learning.online.domain_router import (
    DEFAULT_MAX_EXAMPLES,
    DomainEvidence,
    DomainRouter,
    EvidenceParts,
    EvidenceView,
    Vector,
)

Ranking = Literal["prior", "learned", "length"]


def new_evidence(max_examples: int = DEFAULT_MAX_EXAMPLES) -> DomainEvidence:
    return DomainEvidence(
        deque(maxlen=max_examples),
        deque(maxlen=max_examples),
        deque(maxlen=max_examples),
        deque(maxlen=max_examples),
    )


@dataclass(slots=True)
class Scoring:
    """The two nearest-neighbour searches of one decision, off the state (`RankingSwitch.scoring`):
    `run` on any thread, then `keep` on the state's (views built from copies are kept for the next
    decisions if the evidence did not change meanwhile)."""

    domain: DomainRouter
    prior: float
    vector: Vector
    # The switches made when the copies were taken: after another, the scores are of the old ranking.
    switches: int
    frozen: EvidenceView | EvidenceParts | None
    live: EvidenceView | EvidenceParts
    scores: tuple[float, float] | None = None
    built: tuple[EvidenceView | None, EvidenceView] | None = None

    def run(self) -> tuple[float, float]:
        """(in-force score, challenger score), as `in_force_score` and `challenger_score` give."""
        frozen = None if self.frozen is None else _view(self.frozen)
        live = _view(self.live)
        in_force = float(self.prior)
        if frozen is not None:
            in_force = self.domain.score_view(frozen, self.prior, self.vector)
        self.scores = in_force, self.domain.score_view(live, self.prior, self.vector)
        self.built = frozen, live
        return self.scores

    def keep(self, state: SwitchState) -> None:
        if self.built is None or state.switches != self.switches:
            return
        frozen, live = self.built
        if isinstance(self.frozen, EvidenceParts) and frozen is not None and state.frozen is not None:
            state.frozen.keep(frozen, self.frozen)
        if isinstance(self.live, EvidenceParts):
            state.evidence.keep(live, self.live)


def _view(source: EvidenceView | EvidenceParts) -> EvidenceView:
    if isinstance(source, EvidenceView):
        return source
    return EvidenceView.build(source)


def _idle_test() -> BettingTests:
    return BettingTests(1, started=np.zeros(1, dtype=bool))


@dataclass(slots=True)
class SwitchState:
    """The live evidence (the challenger's), the frozen snapshot in force (None: the prior), the
    challenger's test against the ranking in force, and the challenger's recent scores (shared)."""

    evidence: DomainEvidence = field(default_factory=new_evidence)
    frozen: DomainEvidence | None = None
    test: BettingTests = field(default_factory=_idle_test)
    challenger_ranks: ScoreRanks = field(default_factory=ScoreRanks)
    # Labelled decisions the test has seen since it started (or restarted), and switches made.
    tested: int = 0
    switches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "evidence": self.evidence.to_json(),
            "frozen": None if self.frozen is None else self.frozen.to_json(),
            "test": self.test.to_json(),
            "challenger_ranks": self.challenger_ranks.to_json(),
            "tested": self.tested,
            "switches": self.switches,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SwitchState:
        frozen = data.get("frozen")
        return cls(
            DomainEvidence.from_json(data["evidence"]),
            None if frozen is None else DomainEvidence.from_json(frozen),
            BettingTests.from_json(data["test"]),
            ScoreRanks.from_json(data["challenger_ranks"]),
            int(data["tested"]),
            int(data["switches"]),
        )


@dataclass(slots=True, frozen=True)
class RankingSwitch:
    """Scores both rankings, tests the challenger, freezes it when it wins (module docstring)."""

    domain: DomainRouter = field(default_factory=DomainRouter)
    confidence: float = 0.95
    min_labels: int = 100
    # Margins are a few hundredths, as the health check's: the bets start from that scale.
    bettor: Bettor = field(default_factory=lambda: Bettor(-0.01, 0.02, 50.0))

    def in_force_score(self, state: SwitchState, prior: float, vector: Vector | None) -> float:
        """The deciding score: the prior, or the prior corrected by the frozen evidence."""
        if state.frozen is None or vector is None:
            return float(prior)
        return self.domain.score(state.frozen, prior, vector)

    def challenger_score(self, state: SwitchState, prior: float, vector: Vector | None) -> float:
        if vector is None:
            return float(prior)
        return self.domain.score(state.evidence, prior, vector)

    def scoring(self, state: SwitchState, prior: float, vector: Vector) -> Scoring:
        """Both scores of a prompt (`in_force_score`, `challenger_score`) as a job that reads only
        copies made now, so a worker thread may run it while the evidence changes here."""
        frozen = state.frozen
        return Scoring(
            self.domain,
            prior,
            vector,
            state.switches,
            None if frozen is None else (frozen.built() or frozen.parts()),
            state.evidence.built() or state.evidence.parts(),
        )

    def challenger_rank(self, state: SwitchState, score: float) -> float:
        """The challenger score's rank among its recent ones (and record it)."""
        rank = state.challenger_ranks.rank(score)
        state.challenger_ranks.record(score)
        return rank

    def observe(
        self,
        state: SwitchState,
        net_gain: int,
        rank_in_force: float,
        rank_challenger: float,
        vector: Vector | None,
        probability: float,
        floor_probability: float,
    ) -> bool:
        """A labelled decision (ranks from decision time). Returns True when the challenger has just
        won: the caller switches (`switch`) and restarts what depends on the ranking."""
        if not 0.0 < floor_probability <= probability <= 1.0:
            raise ValueError("need 0 < floor_probability <= probability <= 1")
        if not state.test.started[0] and len(state.evidence.vectors) >= self.min_labels:
            state.test.start(np.ones(1, dtype=bool))
        if state.test.started[0]:
            margin = net_gain * (rank_in_force - rank_challenger)
            self.bettor.observe(
                state.test, np.array([margin / probability]), np.array([1.0 / floor_probability])
            )
            state.tested += 1
        if vector is not None:
            state.evidence.add(vector, net_gain, 1.0 / probability)
        return bool(state.test.log_wealth[0] >= threshold(self.confidence))

    def observe_unlabelled(self, state: SwitchState, count: int = 1) -> None:
        self.bettor.observe_zeros(state.test, count)

    def switch(self, state: SwitchState) -> None:
        """The challenger wins: freeze it as the ranking in force; its recent scores become the
        in-force ranking's (the caller takes `state.challenger_ranks` for its rank window)."""
        state.frozen = copy.deepcopy(state.evidence)
        state.test = _idle_test()
        state.test.start(np.ones(1, dtype=bool))
        state.tested = 0
        state.switches += 1

    def evidence(self, state: SwitchState) -> float:
        """The e-value against "the challenger is no better" (>= 1/alpha: it wins)."""
        return float(np.exp(min(float(state.test.log_wealth[0]), 700.0)))

    def ranking(self, state: SwitchState, flagged: bool) -> Ranking:
        if flagged:
            return "length"
        return "prior" if state.frozen is None else "learned"
