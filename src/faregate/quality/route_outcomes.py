"""One calibrated route after the response: the daily cap, and verified outcomes learnt from.

The daily USD cap: a shadow call whose worst case no longer fits under the day's cap is refused
(quality/spend.py admits it against every instance's holds, kept in the store's cap ledger;
`admit` is the check alone), and from
then on the calibration *pauses* for the rest of the day: decisions still take the
cut in force but are neither labelled nor counted. Skipping a stretch of decisions chosen by the
clock, not by their outcomes, keeps the tests valid under the i.i.d. assumption, whereas counting
them as unlabelled while their p said they might have been labelled would bias the estimate.

A verified decision is observed (`observe`) by the calibration, which recalibrates the cut.

Router health: every labelled router decision also feeds the betting test of "the router ranks
no better than random or the prompt length". Once flagged, the route ranks by prompt length and
its calibration restarts (evidence about one ranking's cuts says nothing of another's): the
`epoch` counts restarts, and a verification decided under an older epoch is not observed.

Domain learning (`learn_domains`, router routes): the router's prompt embedding is kept on labelled
decisions; each verified one becomes an example of the challenger ranking (the prior corrected by
labelled neighbours), which is ranked beside the ranking in force at decision time and tested
against it (learning/online/ranking_switch.py). When its test wins it is frozen and put in force:
a new epoch, the calibration and the health check start again, as after a health flag.
"""

from __future__ import annotations

from decimal import Decimal

from faregate.learning.online.calibrator import LabelledDecision, ScoreRanks
from faregate.learning.online.health import HealthState
from faregate.quality.route_state import RouteState
from faregate.quality.state import Decision, Pause, roll_over
from faregate.store.rows import to_nanousd


class RouteOutcomes(RouteState):
    """A route's daily cap and the outcomes of its verifications (module docstring)."""

    def admit(self, day: str, estimate: Decimal) -> bool:
        """May a shadow call estimated at `estimate` USD be made today? A refusal pauses the
        calibration for the rest of the day (module docstring). Holds aside (quality/spend.py)."""
        if estimate <= self.left_today(day):
            return True
        self.apply(lambda: self.refuse(day))
        return False

    def left_today(self, day: str) -> Decimal:
        """What the daily cap leaves to spend today, holds aside (nothing once the day is paused)."""
        budget, cap = self.state.budget, self.settings.verification.daily_usd_cap
        paused = self.state.paused
        if paused is not None and paused.holds(day, cap):
            return Decimal(0)
        return cap - (budget.spent if budget.day == day else Decimal(0))

    def refuse(self, day: str) -> None:
        """The cap cannot admit a verification: paused for the day (a change of the state as is,
        not journaled: the caller writes it at once, quality/spend.py)."""
        budget = self.state.budget
        self.state.totals.skipped_for_cap += 1
        if not roll_over(budget, day):
            return  # a day already over: today is not paused for it
        budget.skipped_for_cap += 1
        # Paused from now on; the day's spend stays what was spent (the figures show it).
        self.state.paused = Pause(day, self.settings.verification.daily_usd_cap)

    def charge(self, decision: Decision, cost: Decimal, day: str) -> None:
        """A verification made: its real cost in the day's spend as the calibration counts it and
        in the totals (the cap's ledger counts it when its hold is settled, quality/spend.py)."""
        self.apply(lambda: self._charge(cost, day))

    def _charge(self, cost: Decimal, day: str) -> None:
        budget = self.state.budget
        if roll_over(budget, day):
            budget.spent += cost
            budget.verified += 1
        self.state.totals.cost_nano += to_nanousd(cost)

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
                # The prior's pseudo-outcomes are about the router's ranking, not length's.
                state.calibration = self.new_calibration(with_prior=False)
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
