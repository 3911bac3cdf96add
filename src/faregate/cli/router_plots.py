"""PNG curves of `faregate router eval`: quality against strong-call share, and against cost."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from faregate.evals.replay.engine import RETAIN
from faregate.evals.replay.router_eval import Curve, Evaluation, Point

_STYLE = {
    "complexity router": {"color": "tab:blue"},
    "prompt length": {"color": "tab:orange"},
    "cascade: learned judge": {"color": "tab:purple"},
    "cascade: rules, then learned judge": {"color": "tab:brown", "ls": "--"},
}
# Operating points: the colour of their policy, a marker per point.
_POINT_COLOURS = (
    ("complexity router", "tab:blue"),
    ("cascade: learned", "tab:purple"),
    ("cascade: rule", "tab:olive"),
)
_MARKERS = ("*", "P", "D", "X")


def _mark(ax: Any, points: list[Point], x: list[float]) -> None:
    for i, (point, position) in enumerate(zip(points, x, strict=True)):
        colour = next((c for prefix, c in _POINT_COLOURS if point.name.startswith(prefix)), "black")
        ax.plot(
            [position],
            [point.accuracy * 100],
            marker=_MARKERS[i % len(_MARKERS)],
            ms=11,
            ls="",
            color=colour,
            markeredgecolor="black",
            label=point.name,
        )


def _style(curve: Curve) -> dict[str, Any]:
    return _STYLE.get(curve.name, {"color": "tab:gray", "alpha": 0.7})


def _frame(evaluation: Evaluation, x_label: str, title: str) -> tuple[Any, Any]:
    # The Figure API with no pyplot: no global state, no display, Agg renders the PNG.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 7), dpi=110)
    ax = figure.add_subplot()
    strong, weak = evaluation.strong_accuracy * 100, evaluation.weak_accuracy * 100
    ax.axhline(strong, color="tab:red", ls="--", lw=1, label=f"all-strong: {evaluation.pair.strong}")
    ax.axhline(weak, color="black", ls="--", lw=1, label=f"all-weak: {evaluation.pair.weak}")
    ax.axhline(strong * RETAIN, color="tab:red", ls=":", lw=1, label=f"{RETAIN:.0%} of strong accuracy")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy on held-out prompts (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return figure, ax


def _save(figure: Any, ax: Any, path: Path) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize="small", frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def plot_shares(evaluation: Evaluation, path: Path) -> None:
    """Accuracy against the share of calls that reach the strong model (routed or escalated)."""
    title = f"{evaluation.data}: held-out split ({evaluation.prompts:,} prompts)"
    figure, ax = _frame(evaluation, f"calls reaching {evaluation.pair.strong} (%)", title)
    for curve in evaluation.curves:
        sweep = curve.report.sweep
        assert sweep is not None
        style = _style(curve)
        ax.plot(
            [p.strong_share * 100 for p in sweep.exact],
            [p.accuracy * 100 for p in sweep.exact],
            lw=1.2,
            label=f"{curve.name} (APGR {curve.metrics.apgr:.3f})",
            **style,
        )
        ax.plot(
            [p.strong_share * 100 for p in sweep.points],
            [p.accuracy * 100 for p in sweep.points],
            marker="o",
            ms=3,
            **{**style, "ls": ""},
        )
    strong, weak = evaluation.strong_accuracy * 100, evaluation.weak_accuracy * 100
    ax.plot([0, 100], [weak, strong], ls="--", color="grey", label="random (expected)")
    oracle = next(m for m in evaluation.reference if m.name == "oracle")
    base = evaluation.curves[0].report.baselines[3]
    gain = base.share(evaluation.pair.strong) * 100
    ax.plot(
        [0, gain, 100],
        [weak, base.accuracy * 100, base.accuracy * 100],
        ls=":",
        color="tab:green",
        label=f"oracle (APGR {oracle.apgr:.3f})",
    )
    for point in evaluation.points:
        ax.plot(
            [point.strong_share * 100], [point.accuracy * 100], marker="*", ms=11, ls="", label=point.name
        )
    ax.set_xlim(0, 100)
    _save(figure, ax, path)


def plot_costs(evaluation: Evaluation, path: Path) -> None:
    """Accuracy against total cost as a share of always calling the strong model.

    A router pays one call per prompt; a cascade pays the cheap call always and both when it
    escalates, so at equal strong share it costs a little more: this plot shows what that buys."""
    title = f"{evaluation.data}: cost against quality, held-out split"
    figure, ax = _frame(evaluation, f"cost (% of always calling {evaluation.pair.strong})", title)
    full = evaluation.all_strong_cost

    def pct(cost: Decimal) -> float:
        return float(cost / full * 100) if full else 0.0

    for curve in evaluation.curves:
        sweep = curve.report.sweep
        assert sweep is not None
        costs = curve.cascade_costs or [p.cost or Decimal(0) for p in sweep.exact]
        ax.plot(
            [pct(c) for c in costs],
            [p.accuracy * 100 for p in sweep.exact],
            lw=1.2,
            label=curve.name,
            **_style(curve),
        )
    _mark(ax, evaluation.points, [pct(p.cost) for p in evaluation.points])
    ax.set_xlim(0, 105)
    _save(figure, ax, path)
