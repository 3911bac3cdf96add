"""The PNG of a replay: accuracy against strong-call share, with every baseline marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faregate.evals.replay.engine import RETAIN, Report


def write_plot(report: Report, path: Path) -> None:
    """Accuracy against strong-call share, PGR on the right axis, with every baseline marked."""
    # The Figure API with no pyplot: no global state, no display, Agg renders the PNG.
    from matplotlib.figure import Figure

    strong, weak = report.strong_accuracy * 100, report.weak_accuracy * 100
    figure = Figure(figsize=(9, 7), dpi=110)
    ax = figure.add_subplot()
    if report.sweep is not None:
        exact = report.sweep.exact
        ax.plot(
            [p.strong_share * 100 for p in exact],
            [p.accuracy * 100 for p in exact],
            lw=0.8,
            alpha=0.5,
            color="tab:blue",
        )
        points = report.sweep.points
        ax.plot(
            [p.strong_share * 100 for p in points],
            [p.accuracy * 100 for p in points],
            marker="o",
            color="tab:blue",
            label=f"{report.sweep.name} (APGR {report.sweep.metrics.apgr:.3f})",
        )
    elif report.policy is not None:
        ax.plot(
            [report.policy.share(report.pair.strong) * 100],
            [report.policy.accuracy * 100],
            marker="o",
            ls="",
            color="tab:blue",
            label=report.policy.name,
        )
    if report.policy is not None and report.sweep is not None:
        ax.plot(
            [report.policy.share(report.pair.strong) * 100],
            [report.policy.accuracy * 100],
            marker="*",
            ms=14,
            ls="",
            color="tab:orange",
            label=report.policy.name,
        )
    ax.plot([0, 100], [weak, strong], ls="--", color="grey", label="random (expected)")
    oracle = report.baselines[3]
    gain = oracle.share(report.pair.strong) * 100
    ax.plot(
        [0, gain, 100],
        [weak, oracle.accuracy * 100, oracle.accuracy * 100],
        ls=":",
        color="tab:green",
        label="oracle",
    )
    ax.axhline(strong, color="tab:red", ls="--", lw=1, label=f"all-strong: {report.pair.strong}")
    ax.axhline(weak, color="black", ls="--", lw=1, label=f"all-weak: {report.pair.weak}")
    ax.axhline(strong * RETAIN, color="tab:red", ls=":", lw=1, label=f"{RETAIN:.0%} of strong accuracy")
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"calls to {report.pair.strong} (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Routing on {report.data} ({report.prompts:,} prompts)")
    span = strong - weak

    def to_pgr(accuracy: Any) -> Any:
        return (np.asarray(accuracy) - weak) / span

    def to_accuracy(gap: Any) -> Any:
        return weak + np.asarray(gap) * span

    ax.secondary_yaxis("right", functions=(to_pgr, to_accuracy)).set_ylabel("PGR")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize="small", frameon=False)
    figure.tight_layout()
    figure.savefig(path, format="png")
