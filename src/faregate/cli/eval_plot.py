"""The cost-vs-quality chart of an eval, with the Pareto frontier marked."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from faregate.evals.prompt_eval.report import EvalReport, ModelSummary

CHART_PNG = "cost_quality.png"


def pareto(summaries: list[ModelSummary]) -> list[ModelSummary]:
    """Models no other model beats on both axes (cheaper-or-equal and better-or-equal, one strictly)."""

    def dominated(s: ModelSummary) -> bool:
        return any(
            o is not s
            and o.cost_per_1k <= s.cost_per_1k
            and o.quality.estimate >= s.quality.estimate
            and (o.cost_per_1k < s.cost_per_1k or o.quality.estimate > s.quality.estimate)
            for o in summaries
        )

    return sorted((s for s in summaries if not dominated(s)), key=lambda s: s.cost_per_1k)


def plot(report: EvalReport, out: Path) -> Path:
    # The Figure API with an Agg canvas: no pyplot global state, no display needed.
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # A model with no score at all (every judge reply unreadable) has no place on a quality axis.
    scored = [s for s in report.summaries if s.quality.estimate == s.quality.estimate]
    frontier = pareto(scored)
    for s in scored:
        cost = float(s.cost_per_1k)
        q = s.quality
        on = s in frontier
        axes.errorbar(
            cost,
            q.estimate,
            yerr=[[max(0.0, q.estimate - q.low)], [max(0.0, q.high - q.estimate)]],
            fmt="o",
            color="tab:red" if on else "tab:blue",
            capsize=3,
        )
        axes.annotate(s.model, (cost, q.estimate), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if frontier:
        axes.step(
            [float(s.cost_per_1k) for s in frontier],
            [s.quality.estimate for s in frontier],
            where="post",
            color="tab:red",
            linestyle="--",
            label="Pareto frontier",
        )
        axes.legend(loc="lower right")
    axes.set_xlabel("cost per 1,000 requests (USD)")
    axes.set_ylabel(f"quality ({report.scorer}), 95% CI")
    axes.set_title("Cost vs quality")
    axes.grid(alpha=0.3)
    path = out / CHART_PNG
    figure.savefig(path)
    return path
