"""What one calibrated route keeps, and how the store's copy of it is taken in.

`RouteState` holds a router or cascade route's parts (the calibrator, the verification plan, the
router health check, the ranking switch) and its `LiveState`, which `to_json` / `from_json`
round-trip; nothing here does I/O. Every change to the state goes through `apply`, which keeps it
in the journal until the store has it: if another instance wrote the route first, the service
(quality/service.py) reloads the stored state and replays the journal (`adopt`).

What the route does with its state: decisions at request time (quality/route_decisions.py),
verified outcomes and the daily cap after the response (quality/route_outcomes.py); the whole
route is `RouteCalibration` (quality/live.py).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np

from faregate.learning.online.calibrator import CalibrationState, ScoreRanks, ShareCalibrator
from faregate.learning.online.health import HealthState, RouterHealth
from faregate.learning.online.prior import pseudo_outcomes
from faregate.learning.online.ranking_switch import RankingSwitch, SwitchState, new_evidence
from faregate.learning.online.settings import QualitySettings
from faregate.learning.online.verification_plan import VerificationPlan
from faregate.quality.state import Kind, LiveState, Prior, UnsavedLimit


class RouteState:
    """One router or cascade route's parts and live state (module docstring)."""

    def __init__(
        self,
        route: str,
        kind: Kind,
        settings: QualitySettings,
        reference_scores: list[float] | None = None,
        prior: Prior | None = None,
        seed: str = "faregate",
    ) -> None:
        self.route = route
        self.kind = kind
        self.settings = settings
        verification = settings.verification
        self.calibrator = ShareCalibrator(settings.target, settings.confidence)
        # The candidate cuts (computed once: the calibrator makes a new array per read).
        self.cuts = self.calibrator.cuts
        self.plan = VerificationPlan(
            verification.share,
            frontier=verification.frontier,
            rest_ratio=verification.rest_ratio,
            free_strong_side=kind == "cascade",
        )
        self.health = RouterHealth(settings.confidence)
        self.learn = settings.learn_domains and kind == "router"
        self.switch = RankingSwitch(confidence=settings.confidence)
        self.reference_scores = list(reference_scores or [])
        self.prior = prior
        self.seed = f"{seed}:{route}"
        # The route's cheap and strong model (or route) names: the shadow calls' targets.
        self.cheap = ""
        self.strong = ""
        # The trained scorer that ranks (the router's file, or the cascade's learned judge), by
        # digest (learning/model_file.py; "" for none).
        self.scorer = ""
        # A cascade's rule checks, as `rules_of` (routing/policies.py) spells them: "" for the
        # default set (and for a router).
        self.rules = ""
        self.state = self.fresh()
        # Changes not yet in the store, in order (see `apply`), and their bound (quality/state.py).
        self.journal: list[Callable[[], None]] = []
        self.unsaved = UnsavedLimit(f"route {route}")
        # What every instance's verifications in flight hold against the daily cap, as the store's
        # cap ledger last said (quality/spend.py; not part of the state).
        self.held = Decimal(0)
        # Too many verifications wait for a slot (quality/verifier.py): decisions are paused as by
        # the daily cap until they catch up (not part of the state: this instance's backlog).
        self.saturated = False

    # -- state ------------------------------------------------------------------------------------

    def fresh(self) -> LiveState:
        state = LiveState(
            self.new_calibration(),
            HealthState(),
            ScoreRanks(reference=list(self.reference_scores)),
            ScoreRanks(),
            switch=SwitchState(new_evidence(self.settings.domain_examples)),
        )
        return state

    def new_calibration(self, with_prior: bool = True) -> CalibrationState:
        """A fresh calibration; the prior's pseudo-outcomes describe the prior's ranking only."""
        calibration = self.calibrator.new_state()
        if with_prior and self.prior is not None and self.settings.prior_outcomes > 0:
            ones = np.ones(len(self.calibrator.cuts))
            # Pseudo-outcomes carry weight 1: every cut's test starts with them.
            self.calibrator.start_tests(calibration, ones > 0)
            for labelled in pseudo_outcomes(
                self.prior.curve, self.prior.strong_accuracy, self.settings.prior_outcomes
            ):
                self.calibrator.observe(calibration, labelled, ones)
            self.calibrator.calibrate(calibration)
        self._start_tests(calibration)
        return calibration

    def _start_tests(self, calibration: CalibrationState) -> None:
        dense = self.plan.dense(self.calibrator.cuts, calibration.cheap_share)
        self.calibrator.start_tests(calibration, dense)

    @property
    def scope(self) -> str:
        """Its row in the store (quality/service.py), apart from the semantic cache's ("cache")."""
        return f"route:{self.route}"

    @property
    def cut(self) -> float:
        return self.state.calibration.cheap_share

    def exhausted(self, day: str) -> bool:
        """Is the day paused: its cap spent, or a verification refused (quality/route_outcomes.py)?"""
        budget, cap = self.state.budget, self.settings.verification.daily_usd_cap
        paused = self.state.paused
        return (budget.day == day and budget.spent >= cap) or (paused is not None and paused.holds(day, cap))

    # -- the journal ------------------------------------------------------------------------------

    def apply(self, change: Callable[[], None]) -> None:
        """Make a change to the state and keep it in the journal until the store has it: if another
        instance wrote the route first, the service reloads the stored state and replays these."""
        change()
        self.journal.append(change)

    # -- the store's view (quality/service.py) ------------------------------------------------------

    def fingerprint(self) -> str:
        """The settings the stored state was made under (the judge model with `llm_judge`, a
        cascade's rule checks unless the default ones): other settings, other tests."""
        s = self.settings
        v = s.verification
        return (
            f"{self.kind}|t={s.target}|c={s.confidence}|prior={s.prior_outcomes}|"
            f"share={v.share}|frontier={v.frontier}|rest={v.rest_ratio}|cmp={v.comparator}"
            # An LLM judge is the standard its labels were read by: another judge, other tests.
            + (f"|judge={v.judge_model}" if v.comparator == "llm_judge" else "")
            + (f"|learn={s.domain_examples}" if self.learn else "")
            # The rules force answers to the strong model whatever their rank: other rules, another
            # decision rule. Named only when not the default, so rows made before are kept.
            + (f"|rules={self.rules}" if self.rules else "")
        )

    def models(self) -> dict[str, str]:
        """What the stored state is about: its cuts certify this cheap model against this strong
        one, on the ranks of this scorer (and its health flag is this scorer's), so a route whose
        models were changed or whose router was retrained or replaced does not inherit them."""
        return {"cheap": self.cheap, "strong": self.strong, "scorer": self.scorer}

    def state_json(self) -> dict[str, Any]:
        return self.state.to_json()

    def adopt_json(self, data: dict[str, Any]) -> None:
        self.adopt(LiveState.from_json(data))

    def adopt(self, state: LiveState) -> None:
        """Take a stored state (another writer's, or at start-up) and replay the unsaved changes.
        The score ranks stay this instance's own (each sees the same traffic mix), unless another
        instance switched the ranking: then the stored window (the new ranking's) is taken."""
        mine = self.state
        if mine.ranks.recent and state.switch.switches == mine.switch.switches:
            state.ranks, state.length_ranks = mine.ranks, mine.length_ranks
            if mine.switch.challenger_ranks.recent:
                state.switch.challenger_ranks = mine.switch.challenger_ranks
        elif mine.length_ranks.recent:
            state.length_ranks = mine.length_ranks
        self.state = state
        for change in self.journal:
            change()
