"""One calibrated route as the gateway runs it: decisions at request time, verified outcomes after.

`RouteCalibration` is the whole route, made of:

- quality/route_state.py     its parts and `LiveState`, the journal of unsaved changes, and the
                             store's view (fingerprint, adopt a stored state); nothing does I/O
- quality/route_decisions.py request time: the rank, the cut in force, the labelling probability
                             and coin fixed on the `Decision`; unlabelled decisions observed at once
- quality/route_outcomes.py  after the response: the daily USD cap (admit, charge, pause for the
                             day), verified outcomes observed, router health, the ranking switch

and here, the figures the dashboard, the API and /metrics show.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np

from faregate.quality.route_decisions import RouteDecisions
from faregate.quality.route_outcomes import RouteOutcomes
from faregate.quality.state import NANO, Decision, LiveState, Prior, Totals, today
from faregate.store.rows import usd_text

__all__ = ["NANO", "Decision", "LiveState", "Prior", "RouteCalibration", "Totals", "today"]


class RouteCalibration(RouteDecisions, RouteOutcomes):
    """One router or cascade route's live calibration (module docstring)."""

    def figures(self) -> dict[str, Any]:
        """What the dashboard, the API and /metrics show for this route."""
        state = self.state
        estimate = self.calibrator.estimate(state.calibration)
        totals = state.totals
        verdict = self.health.verdict(state.health) if self.kind == "router" else None
        day = today()
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
            "verification_cost_usd": usd_text(Decimal(totals.cost_nano) / NANO),
            "daily_usd_cap": usd_text(self.settings.verification.daily_usd_cap),
            # The budget keeps the last day that had a verification: none today, nothing spent.
            "spent_today_usd": usd_text(state.budget.spent if state.budget.day == day else Decimal(0)),
            # Worst cases of the verifications in flight, every instance's (quality/spend.py).
            "held_usd": usd_text(self.held),
            "cap_reached": self.exhausted(day),
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
    # Over 1 (a prior whose cheap path beat the strong one): the paths differ on at least a share
    # |1 - quality| of decisions, which gives the spread q(1 - q) does under 1 (there negative).
    differ = min(abs(1.0 - quality), 1.0)
    half = 1.96 * float(np.sqrt(max(differ * (1.0 - differ), 0.25 / n) / n))
    # Capped at 100% only when the estimate is under it: else the interval ended below its estimate.
    ceiling = 1.0 if quality <= 1.0 else float("inf")
    return [max(0.0, quality - half), min(ceiling, quality + half)]
