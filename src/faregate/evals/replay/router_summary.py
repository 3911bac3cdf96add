"""Rows of `faregate router eval` / `evidence`: per policy, the RouteLLM metrics and the cost cut.

Shared by the tables the commands print and the JSON they write, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from faregate.evals.replay.engine import RETAIN, Metrics
from faregate.evals.replay.router_eval import Curve, Evaluation, Point


@dataclass(slots=True, frozen=True)
class Row:
    policy: str
    apgr: float
    cpt50: float | None
    cpt80: float | None
    # Share of calls reaching the strong model needed to keep RETAIN of its accuracy (exact curve).
    retain_share: float | None
    # Cost at that point against always calling the strong model (None: never reaches it).
    retain_cost_share: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "apgr": self.apgr,
            "cpt_50": self.cpt50,
            "cpt_80": self.cpt80,
            f"strong_share_for_{RETAIN:.0%}": self.retain_share,
            f"cost_share_vs_all_strong_at_{RETAIN:.0%}": self.retain_cost_share,
        }


def _retain_cost(curve: Curve, evaluation: Evaluation) -> float | None:
    sweep = curve.report.sweep
    assert sweep is not None
    point = sweep.retain_point
    if point is None or not evaluation.all_strong_cost:
        return None
    if curve.cascade_costs is not None:
        cost = curve.cascade_costs[sweep.exact.index(point)]
    else:
        cost = point.cost if point.cost is not None else Decimal(0)
    return float(cost / evaluation.all_strong_cost)


def rows(evaluation: Evaluation) -> list[Row]:
    out = []
    for curve in evaluation.curves:
        m = curve.metrics
        out.append(
            Row(curve.name, m.apgr, m.cpt[0.5], m.cpt[0.8], m.retain_share, _retain_cost(curve, evaluation))
        )
    for metrics in evaluation.reference:
        out.append(_reference_row(metrics, evaluation))
    return out


def _reference_row(metrics: Metrics, evaluation: Evaluation) -> Row:
    name = "random (expected)" if metrics.name == "random" else metrics.name
    share = metrics.retain_share
    cost = None
    if share is not None and evaluation.all_strong_cost:
        # Routers only: the share of strong calls, the rest weak.
        mixed = Decimal(str(share)) * evaluation.all_strong_cost + (1 - Decimal(str(share))) * (
            evaluation.all_weak_cost
        )
        cost = float(mixed / evaluation.all_strong_cost)
    return Row(name, metrics.apgr, metrics.cpt[0.5], metrics.cpt[0.8], share, cost)


def point_json(point: Point, evaluation: Evaluation) -> dict[str, Any]:
    return {
        "policy": point.name,
        "strong_share": point.strong_share,
        "accuracy": point.accuracy,
        "retained": point.accuracy / evaluation.strong_accuracy if evaluation.strong_accuracy else None,
        "cost_usd": str(point.cost),
        "cost_share_vs_all_strong": float(point.cost / evaluation.all_strong_cost)
        if evaluation.all_strong_cost
        else None,
    }


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "data": evaluation.data,
        "split": evaluation.split,
        "strong": evaluation.pair.strong,
        "weak": evaluation.pair.weak,
        "held_out_prompts": evaluation.prompts,
        "strong_accuracy": evaluation.strong_accuracy,
        "weak_accuracy": evaluation.weak_accuracy,
        "all_strong_cost_usd": str(evaluation.all_strong_cost),
        "all_weak_cost_usd": str(evaluation.all_weak_cost),
        "policies": [r.to_json() for r in rows(evaluation)],
        "points": [point_json(p, evaluation) for p in evaluation.points],
        "curves": {
            c.name: [
                {"strong_share": p.strong_share, "accuracy": p.accuracy, "threshold": p.threshold}
                for p in (c.report.sweep.points if c.report.sweep else [])
            ]
            for c in evaluation.curves
        },
        "timing_ms": evaluation.timing_ms,
    }
