"""Tables of `faregate router eval` and `faregate router evidence`."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from faregate.evals.replay.engine import RETAIN
from faregate.evals.replay.router_eval import Evaluation
from faregate.evals.replay.router_summary import rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_evaluation(evaluation: Evaluation, console: Console) -> None:
    split = evaluation.split
    console.print(
        f"[bold]{evaluation.data}[/bold]: {evaluation.prompts:,} held-out prompts "
        f"({split['by']} split, seed {split['seed']}, test fraction {split['test_fraction']}); "
        f"strong {evaluation.strong_accuracy:.1%}, weak {evaluation.weak_accuracy:.1%}"
    )
    if split["by"] == "source":
        console.print(
            f"held-out subjects: {', '.join(s.removeprefix('mmlu_') for s in split['test_sources'])}"
        )
    table = Table(
        title="RouteLLM metrics on the held-out prompts (CPT = share of calls reaching the strong model)"
    )
    table.add_column("policy")
    for column in (
        "APGR",
        "CPT(50%)",
        "CPT(80%)",
        f"strong calls for {RETAIN:.0%}",
        "cost vs all-strong there",
    ):
        table.add_column(column, justify="right")
    for row in rows(evaluation):
        table.add_row(
            row.policy,
            f"{row.apgr:.3f}",
            _pct(row.cpt50),
            _pct(row.cpt80),
            _pct(row.retain_share),
            _pct(row.retain_cost_share),
        )
    console.print(table)
    if evaluation.points:
        points = Table(title="Operating points (settings one can deploy)")
        points.add_column("policy")
        for column in ("strong calls", "accuracy", "of strong accuracy", "cost vs all-strong"):
            points.add_column(column, justify="right")
        for point in evaluation.points:
            cost = float(point.cost / evaluation.all_strong_cost) if evaluation.all_strong_cost else None
            # Data the strong model never gets right: no share of it to keep ("-", as replay prints).
            kept = point.accuracy / evaluation.strong_accuracy if evaluation.strong_accuracy else None
            points.add_row(
                point.name,
                _pct(point.strong_share),
                _pct(point.accuracy),
                _pct(kept),
                _pct(cost),
            )
        console.print(points)
    if evaluation.timing_ms:
        t = evaluation.timing_ms
        console.print(
            f"router scoring time, one prompt at a time on this machine: p50 {t['p50_ms']:.1f} ms, "
            f"p95 {t['p95_ms']:.1f} ms (hand-made features alone: {t['features_p50_ms']:.2f} ms)"
        )


def print_robustness(runs: dict[int, list[Evaluation]], console: Console) -> dict[str, Any]:
    """Per data set and policy: metrics over every split seed, each model on its own held-out part."""
    summary: dict[str, Any] = {}
    table = Table(title=f"Across {len(runs)} split seeds ({', '.join(map(str, runs))}): mean [min, max]")
    for column in ("data", "policy", "APGR", f"strong calls for {RETAIN:.0%}"):
        table.add_column(column, justify="left" if column in ("data", "policy") else "right")
    first = next(iter(runs.values()))
    for index, evaluation in enumerate(first):
        for row_index, row in enumerate(rows(evaluation)):
            apgrs = [rows(r[index])[row_index].apgr for r in runs.values()]
            shares = [rows(r[index])[row_index].retain_share for r in runs.values()]
            known = [v for v in shares if v is not None]
            summary.setdefault(evaluation.data, {})[row.policy] = {"apgr": apgrs, "retain_share": shares}
            share_text = f"{np.mean(known):.1%} [{min(known):.1%}, {max(known):.1%}]" if known else "-"
            if len(known) < len(shares):
                share_text += f" ({len(shares) - len(known)} never)"
            table.add_row(
                evaluation.data,
                row.policy,
                f"{np.mean(apgrs):.3f} [{min(apgrs):.3f}, {max(apgrs):.3f}]",
                share_text,
            )
    console.print(table)
    return summary
