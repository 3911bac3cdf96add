"""One calibrated route as the gateway runs it: decisions at request time, verified outcomes after.

`RouteCalibration.decide` is called on the request path, once per router or cascade decision: the
decision's score becomes a rank among recent scores; the route takes the cheap path when the rank is
below the cut in force (with too little evidence the cut is 0: every request takes the strong
path). The labelling probability p and the label coin are fixed *now*, with the plan in force,
and kept on the returned `Decision` (docs/quality-guarantee.md: the inverse-probability weights
need the probability each decision really had). An unlabelled decision is observed at once (a
zero for every test); a labelled one is observed when its verification comes back
(`observe`), possibly after other decisions, which keeps the bets predictable.

Router health: every labelled router decision also feeds the betting test of "the router ranks
no better than random or the prompt length". Once flagged, the route ranks by prompt length and
its calibration restarts (evidence about one ranking's cuts says nothing of another's): the
`epoch` counts restarts, and a verification decided under an older epoch is not observed.

Domain learning (`learn_domains`, router routes): the router's prompt embedding is kept on labelled
decisions; each verified one becomes an example of the challenger ranking (the prior corrected by
labelled neighbours), which is ranked beside the ranking in force at decision time and tested
against it (learning/online/ranking_switch.py). When its test wins it is frozen and put in force:
a new epoch, the calibration and the health check start again, as after a health flag.

The daily USD cap: a shadow call whose worst case no longer fits under the day's cap is refused
(quality/spend.py admits it against every instance's holds; `admit` is the check alone), and from
then on the calibration *pauses* for the rest of the day: decisions still take the
cut in force but are neither labelled nor counted. Skipping a stretch of decisions chosen by the
clock, not by their outcomes, keeps the tests valid under the i.i.d. assumption, whereas counting
them as unlabelled while their p said they might have been labelled would bias the estimate.

All state is in `LiveState`, which `to_json` / `from_json` round-trip; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import numpy as np

from faregate.learning.online.calibrator import (
    CalibrationState,
    LabelledDecision,
    ScoreRanks,
    ShareCalibrator,
)
from faregate.learning.online.domain_router import Vector
from faregate.learning.online.health import HealthState, RouterHealth
from faregate.learning.online.prior import pseudo_outcomes
from faregate.learning.online.ranking_switch import RankingSwitch, SwitchState, new_evidence
from faregate.learning.online.sampling import coin
from faregate.learning.online.settings import QualitySettings
from faregate.learning.online.verification_plan import VerificationPlan, pace
from faregate.quality.state import (
    NANO,
    Decision,
    Held,
    Kind,
    LabelKind,
    LiveState,
    Prior,
    Totals,
    roll_over,
    today,
)

__all__ = ["NANO", "Decision", "LiveState", "Prior", "RouteCalibration", "Totals", "today"]

# Examples (the challenger's and the frozen ranking's) from which a decision's nearest-neighbour
# searches run on a worker thread (bench/README.md, "What domain learning adds": below it the hop
# costs the event loop about as much as the searches it saves).
OFF_LOOP_EXAMPLES = 1000
_NEIGHBOURS: list[ThreadPoolExecutor] = []


def _neighbours() -> ThreadPoolExecutor:
    """The one worker thread the searches run on (created on first use)."""
    if not _NEIGHBOURS:
        _NEIGHBOURS.append(ThreadPoolExecutor(1, thread_name_prefix="faregate-neighbours"))
    return _NEIGHBOURS[0]


class RouteCalibration:
    """One router or cascade route's live calibration (module docstring)."""

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
        self.state = self.fresh()
        # Changes not yet in the store, in order (see `apply`).
        self.journal: list[Callable[[], None]] = []

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
    def cut(self) -> float:
        return self.state.calibration.cheap_share

    def exhausted(self, day: str) -> bool:
        budget = self.state.budget
        return budget.day == day and budget.spent >= self.settings.verification.daily_usd_cap

    # -- request time -----------------------------------------------------------------------------

    def decide(
        self,
        request_id: str,
        score: float,
        length: float,
        *,
        force_strong: bool = False,
        day: str | None = None,
        vector: Vector | None = None,
        scored: tuple[float, float] | None = None,
    ) -> Decision:
        """Cheap or strong for this score (`force_strong`: a cascade answer a rule check refused),
        with the labelling probability and coin fixed now; an unlabelled decision is observed now.
        `vector`: the prompt's unit embedding (domain learning); `scored`: its in-force and
        challenger scores when already computed (`decide_off_loop`), else they are computed here."""
        state = self.state
        learning = self.learn and vector is not None
        deciding, challenger = float(score), 0.0
        if learning and scored is not None:
            deciding, challenger = scored
        elif learning:
            deciding = self.switch.in_force_score(state.switch, score, vector)
            challenger = self.switch.challenger_score(state.switch, score, vector)
        challenger_rank = 0.0
        if learning:
            challenger_rank = self.switch.challenger_rank(state.switch, challenger)
        router_rank = state.ranks.rank(deciding)
        length_rank = state.length_ranks.rank(length)
        state.ranks.record(deciding)
        state.length_ranks.record(length)
        rank = length_rank if state.flagged else router_rank
        cut = self.cut
        cheap = not force_strong and cut > 0.0 and rank < cut - 1e-12
        scale = pace(self.settings.verification.share, state.shadow_calls, state.decisions)
        probability = self.plan.probability(rank, cut, scale)
        free = self.kind == "cascade" and not cheap
        label_kind: LabelKind = "free" if free else ("paid" if cheap else "cheap")
        if free:
            probability = 1.0
        paused = self.exhausted(day or today())
        decision = Decision(
            self.route,
            self.kind,
            request_id,
            float(score),
            rank,
            router_rank,
            length_rank,
            cut,
            cheap,
            probability,
            labelled=not paused and coin(self.seed, request_id) < probability,
            label_kind=label_kind,
            floor=self.plan.floor_probabilities(self.cuts, cut, scale),
            least=self.plan.least_probability(cut, scale),
            epoch=state.epoch,
            paused=paused,
            challenger_rank=challenger_rank,
        )
        if learning and decision.labelled:
            decision.vector = vector
        if not paused:
            self.apply(lambda: self._count(decision))
        return decision

    async def decide_off_loop(
        self, request_id: str, score: float, length: float, vector: Vector | None
    ) -> Decision:
        """`decide` for a router's prompt, with domain learning's two nearest-neighbour searches
        (and the rebuilding of the evidence's arrays after a change) on a worker thread once the
        evidence is large enough for the searches to cost the event loop more than the hop
        (OFF_LOOP_EXAMPLES, bench/domain_learning.py). The scores are the same numbers `decide`
        computes from the same evidence, so decisions do not depend on where they were computed;
        a ranking switched in while the searches ran makes them again here, on the new one."""
        switch = self.state.switch
        examples = len(switch.evidence.vectors) + (0 if switch.frozen is None else len(switch.frozen.vectors))
        if not self.learn or vector is None or examples < OFF_LOOP_EXAMPLES:
            return self.decide(request_id, score, length, vector=vector)
        job = self.switch.scoring(switch, score, vector)
        scored = await asyncio.get_running_loop().run_in_executor(_neighbours(), job.run)
        now = self.state.switch
        job.keep(now)
        valid = now.switches == job.switches
        return self.decide(request_id, score, length, vector=vector, scored=scored if valid else None)

    def _count(self, decision: Decision) -> None:
        state = self.state
        state.decisions += 1
        if decision.labelled and decision.label_kind != "free":
            state.shadow_calls += self.kind == "router" or decision.label_kind == "paid"
        if not decision.labelled and decision.epoch == state.epoch:
            self.calibrator.observe_unlabelled(state.calibration)
            if self.kind == "router" and not state.flagged:
                self.health.observe_unlabelled(state.health)
            if self.learn:
                self.switch.observe_unlabelled(state.switch)

    # -- after the response -----------------------------------------------------------------------

    def admit(self, day: str, estimate: Decimal) -> bool:
        """May a shadow call estimated at `estimate` USD be made today? A refusal pauses the
        calibration for the rest of the day (module docstring). Holds aside (quality/spend.py)."""
        if estimate <= self.left_today(day):
            return True
        self.apply(lambda: self.refuse(day))
        return False

    @property
    def holds(self) -> dict[str, Held]:
        """Verifications admitted against the cap and not settled, by hold id (quality/spend.py)."""
        return self.state.holds

    def left_today(self, day: str) -> Decimal:
        """What the daily cap leaves to spend today, holds aside."""
        budget = self.state.budget
        spent = budget.spent if budget.day == day else Decimal(0)
        return self.settings.verification.daily_usd_cap - spent

    def refuse(self, day: str) -> None:
        """The cap cannot admit a verification: paused for the day (a change of the state as is,
        not journaled: the caller writes it at once, quality/spend.py)."""
        budget = self.state.budget
        roll_over(budget, day)
        budget.skipped_for_cap += 1
        self.state.totals.skipped_for_cap += 1
        # Paused from now on: the day's spend is marked full.
        budget.spent = max(budget.spent, self.settings.verification.daily_usd_cap)

    def charge(self, decision: Decision, cost: Decimal, day: str, hold: str | None = None) -> None:
        """A verification made: its real cost counts against the day's cap and in the totals, and
        its hold (if any) goes in the same change, so the store never counts neither or both."""
        self.apply(lambda: self._charge(cost, day, hold))

    def _charge(self, cost: Decimal, day: str, hold: str | None) -> None:
        budget = self.state.budget
        roll_over(budget, day)
        budget.spent += cost
        budget.verified += 1
        self.state.totals.cost_nano += int(cost * NANO)
        if hold is not None:
            self.state.holds.pop(hold, None)

    def release(self, hold: str) -> None:
        """A hold let go with nothing charged (the verification stopped before any cost)."""

        def let_go() -> None:
            self.state.holds.pop(hold, None)

        self.apply(let_go)

    def observe(self, decision: Decision, loss: bool) -> None:
        """A verified decision: the cheap answer was (not) acceptable against the reference. A live
        comparator takes the reference as the standard (calibrator.py): no gains, s = 1."""
        self.apply(lambda: self._observe(decision, loss))

    def _observe(self, decision: Decision, loss: bool) -> None:
        state = self.state
        totals = state.totals
        totals.verifications += 1
        totals.by_label[decision.label_kind] = totals.by_label.get(decision.label_kind, 0) + 1
        totals.losses += loss
        if decision.epoch != state.epoch:
            return  # decided under a ranking since abandoned
        labelled = LabelledDecision(decision.rank, loss, False, True, decision.probability)
        self.calibrator.observe(state.calibration, labelled, decision.floor)
        self.calibrator.calibrate(state.calibration)
        self._start_tests(state.calibration)
        if self.kind != "router":
            return
        least = min(decision.least, decision.probability)
        if not state.flagged:
            self.health.observe(
                state.health,
                int(loss),
                decision.router_rank,
                decision.length_rank,
                decision.probability,
                least,
            )
            verdict = self.health.verdict(state.health)
            if verdict.flagged:
                state.flagged, state.flag_reason = True, verdict.reason
                state.epoch += 1
                state.calibration = self.new_calibration()
        if self.learn and self.switch.observe(
            state.switch,
            int(loss),
            decision.rank,
            decision.challenger_rank,
            decision.vector,
            decision.probability,
            least,
        ):
            self._switch_to_challenger()

    def _switch_to_challenger(self) -> None:
        """The challenger won: frozen, it ranks from now on (its recent scores are the rank window);
        a new epoch, and what was about the old ranking starts again."""
        state = self.state
        self.switch.switch(state.switch)
        state.ranks = state.switch.challenger_ranks
        state.switch.challenger_ranks = ScoreRanks.from_json(state.ranks.to_json())
        state.flagged, state.flag_reason = False, ""
        state.health = HealthState()
        state.epoch += 1
        state.calibration = self.new_calibration(with_prior=False)

    def failed(self, decision: Decision) -> None:
        """The reference could not be had: the decision stays unobserved (counted as failed)."""

        def count() -> None:
            self.state.totals.failed += 1

        self.apply(count)

    # -- the journal ------------------------------------------------------------------------------

    def apply(self, change: Callable[[], None]) -> None:
        """Make a change to the state and keep it in the journal until the store has it: if another
        instance wrote the route first, the service reloads the stored state and replays these."""
        change()
        self.journal.append(change)

    # -- the store's view (quality/service.py) ------------------------------------------------------

    def fingerprint(self) -> str:
        """The settings the stored state was made under: other settings, other tests."""
        s = self.settings
        v = s.verification
        return (
            f"{self.kind}|t={s.target}|c={s.confidence}|prior={s.prior_outcomes}|"
            f"share={v.share}|frontier={v.frontier}|rest={v.rest_ratio}|cmp={v.comparator}"
            + (f"|learn={s.domain_examples}" if self.learn else "")
        )

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

    # -- figures ----------------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """What the dashboard, the API and /metrics show for this route."""
        state = self.state
        estimate = self.calibrator.estimate(state.calibration)
        totals = state.totals
        verdict = self.health.verdict(state.health) if self.kind == "router" else None
        return {
            "route": self.route,
            "kind": self.kind,
            "target": self.settings.target,
            "confidence": self.settings.confidence,
            "strong_share": estimate.strong_share,
            "estimated_quality": estimate.relative_quality,
            "quality_interval": _interval(estimate.relative_quality, totals.verifications),
            "evidence": estimate.evidence,
            "decisions": state.decisions,
            # Labelled decisions behind the calibration, the prior's pseudo-outcomes included.
            "labelled": estimate.labelled,
            "prior_outcomes": self.settings.prior_outcomes,
            "verifications": totals.verifications,
            "by_label": dict(totals.by_label),
            "losses": totals.losses,
            "failed": totals.failed,
            "verification_cost_usd": str(Decimal(totals.cost_nano) / NANO),
            "daily_usd_cap": str(self.settings.verification.daily_usd_cap),
            "spent_today_usd": str(state.budget.spent),
            # Worst cases of the verifications in flight, every instance's (quality/spend.py).
            "held_usd": str(sum((h.amount for h in state.holds.values()), Decimal(0))),
            "cap_reached": self.exhausted(today()),
            "skipped_for_cap": totals.skipped_for_cap,
            "flagged": state.flagged,
            "health": state.flag_reason or (verdict.reason if verdict else ""),
            "ranking": self.switch.ranking(state.switch, state.flagged) if self.kind == "router" else "judge",
            "epoch": state.epoch,
            "learn_domains": self.learn,
            # The challenger's e-value against the ranking in force (switches at 1 / (1 - confidence)),
            # its labelled examples, and the switches made so far.
            "challenger_evidence": self.switch.evidence(state.switch) if self.learn else None,
            "domain_examples": len(state.switch.evidence.vectors),
            "switches": state.switch.switches,
        }


def _interval(quality: float, n: int) -> list[float]:
    """A rough 95% interval for the display (normal, on the verified decisions); the guarantee is
    the e-value's, not this."""
    if n <= 0:
        return [0.0, 1.0]
    half = 1.96 * float(np.sqrt(max(quality * (1.0 - quality), 0.25 / n) / n))
    return [max(0.0, quality - half), min(1.0, quality + half)]
