"""What `faregate replay` prints and writes: the policy, threshold-sweep and RouteLLM-metric
tables, and the report as JSON."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from faregate.evals.costs.projection import display_usd
from faregate.evals.replay.engine import RETAIN, CurvePoint, Metrics, PolicyResult, Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def policy_table(report: Report) -> Table:
    all_strong = report.baselines[0]
    table = Table(title=f"Policies on {report.data}: {report.prompts:,} prompts")
    table.add_column("policy")
    for column in (f"{report.pair.strong} calls", "accuracy", "PGR", "cost", "saved vs all-strong"):
        table.add_column(column, justify="right")
    rows = list(report.baselines)
    chosen = report.policy
    if chosen is not None and chosen.name not in {b.name for b in rows}:
        rows.append(chosen)
    for row in rows:
        saved = all_strong.cost - row.cost
        table.add_row(
            row.name + (" (expected)" if row.expected else ""),
            _pct(row.share(report.pair.strong)),
            _pct(row.accuracy),
            f"{report.pgr(row.accuracy):.3f}",
            display_usd(row.cost),
            _pct(float(saved / all_strong.cost)) if all_strong.cost else "-",
            style="bold" if chosen is not None and row.name == chosen.name else None,
        )
    return table


def curve_table(report: Report) -> Table:
    assert report.sweep is not None
    bins = len(report.sweep.points) - 1
    table = Table(title=f"{report.sweep.name}: threshold sweep (RouteLLM's {bins} quantile bins)")
    for column in ("score ≥", "strong calls", "accuracy", "PGR", "cost"):
        table.add_column(column, justify="right")
    for point in report.sweep.points:
        table.add_row(
            "-" if point.threshold is None else f"{point.threshold:g}",
            _pct(point.strong_share),
            _pct(point.accuracy),
            f"{report.pgr(point.accuracy):.3f}",
            "-" if point.cost is None else display_usd(point.cost),
        )
    return table


def metrics_table(report: Report) -> Table:
    assert report.sweep is not None
    table = Table(title="RouteLLM metrics (CPT = strong-call share reaching that PGR)")
    table.add_column("policy")
    for column in ("APGR", "CPT(50%)", "CPT(80%)", f"strong calls for {RETAIN:.0%} of strong accuracy"):
        table.add_column(column, justify="right")
    policy = report.sweep.metrics
    # The random reference is the expectation (a straight line), not one seeded run.
    rows = [(policy.name, policy)] + [
        (f"{m.name} (expected)" if m.name == "random" else m.name, m) for m in report.reference
    ]
    for label, metrics in rows:
        table.add_row(
            label,
            f"{metrics.apgr:.3f}",
            _pct(metrics.cpt[0.5]),
            _pct(metrics.cpt[0.8]),
            _pct(metrics.retain_share),
            style="bold" if metrics is policy else None,
        )
    return table


def _point_json(point: CurvePoint, report: Report) -> dict[str, Any]:
    return {
        "threshold": point.threshold,
        "strong_share": point.strong_share,
        "accuracy": point.accuracy,
        "pgr": report.pgr(point.accuracy),
        "cost_usd": None if point.cost is None else str(point.cost),
    }


def _policy_json(result: PolicyResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "shares": result.shares,
        "accuracy": result.accuracy,
        "cost_usd": str(result.cost),
        "expected": result.expected,
    }


def _metrics_json(metrics: Metrics) -> dict[str, Any]:
    return {
        "name": metrics.name,
        "apgr": metrics.apgr,
        "cpt_50": metrics.cpt[0.5],
        "cpt_80": metrics.cpt[0.8],
        f"strong_share_for_{RETAIN:.0%}_of_strong_accuracy": metrics.retain_share,
    }


def report_json(report: Report) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data": report.data,
        "prompts": report.prompts,
        "contaminated_skipped": report.contaminated_skipped,
        "strong": report.pair.strong,
        "weak": report.pair.weak,
        "prices_per_1m": {
            m: {"input": str(p.input), "output": str(p.output)} for m, p in report.prices.items()
        },
        "strong_accuracy": report.strong_accuracy,
        "weak_accuracy": report.weak_accuracy,
        "baselines": [_policy_json(b) for b in report.baselines],
        "policy": None if report.policy is None else _policy_json(report.policy),
        "reference_metrics": [_metrics_json(m) for m in report.reference],
    }
    if report.sweep is not None:
        data["metrics"] = _metrics_json(report.sweep.metrics)
        data["curve"] = [_point_json(p, report) for p in report.sweep.points]
        data["exact_curve"] = [_point_json(p, report) for p in report.sweep.exact]
    return data
