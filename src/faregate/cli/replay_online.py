"""`faregate replay --online`: the closed loop of online calibration on recorded outcomes, shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from faregate.evals.costs.projection import display_usd
from faregate.evals.replay.online import OnlineOptions, OnlineReport, Window, run_online
from faregate.evals.replay.online_setup import prepare
from faregate.evals.replay.outcomes import Outcomes
from faregate.types import Price

# Windows before this many prompts are the warm-up the target table leaves out.
WARM_UP = 1000


def online_options(
    *,
    target: float,
    confidence: float,
    verify_share: float,
    frontier: float,
    rest_ratio: float,
    free_labels: bool,
    prior: int,
    window: int,
    seed: int,
    order: str,
    learn: bool,
) -> OnlineOptions:
    """The command line's --online options (their ranges checked by the options' callbacks in
    replay.py, before anything loads; the mode comes from the policy file)."""
    return OnlineOptions(
        mode="router",
        target=target,
        confidence=confidence,
        verify_share=verify_share,
        frontier=frontier,
        rest_ratio=rest_ratio,
        free_labels=free_labels,
        prior_count=prior,
        window=window,
        seed=seed,
        order="shuffled" if order == "shuffled" else "by-source",
        learn=learn,
    )


def replay_online(
    outcomes: Outcomes,
    policy: str,
    options: OnlineOptions,
    prices: dict[str, Price],
    *,
    held_out: bool,
    cache_dir: Path | None,
    json_out: Path | None,
    console: Console,
) -> OnlineReport:
    if options.learn and policy.partition(":")[0] == "judge":
        # Domain learning corrects a router's ranking of prompts; a cascade ranks the cheap answers
        # and the replay ran without it, saying nothing. Said before anything is embedded.
        raise ValueError("--learn applies to a router policy (router:FILE) only, not judge:FILE")
    prepared = prepare(policy, outcomes, held_out_only=held_out, cache_dir=cache_dir)
    options = OnlineOptions(**{**_fields(options), "mode": prepared.mode})
    report = run_online(
        prepared.outcomes,
        prepared.prior,
        prepared.vectors,
        prepared.pair,
        prices,
        options,
        prepared.reference_scores,
        prepared.curve,
    )
    console.print(
        f"{report.data}: {prepared.note}; {options.mode}, stream order {options.order} (seed {options.seed})"
    )
    console.print(_window_table(report))
    for line in summary_lines(report):
        console.print(line, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
        console.print(f"report written to {json_out}")
    return report


def _fields(options: OnlineOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in OnlineOptions.__dataclass_fields__}


def _window_table(report: OnlineReport) -> Table:
    o = report.options
    prior = f", prior worth {o.prior_count} outcomes" if o.prior_count else ", no prior"
    table = Table(
        title=f"Online calibration, target {o.target:.0%} of {report.pair.strong}'s accuracy, "
        f"anytime-valid at {o.confidence:.0%} confidence, shadow calls on {o.verify_share:.0%} of "
        f"decisions{prior}"
    )
    for column in (
        "prompts",
        "accuracy",
        "strong's accuracy",
        "kept",
        "strong answers",
        "strong calls (with verification)",
        "labels free / cheap / paid",
        "shadow calls",
        "cost (with verification)",
        "of which verification",
        "strong share at start",
    ):
        table.add_column(column, justify="right")
    for w in [*report.windows, report.total]:
        last = w is report.total
        table.add_row(
            "all" if last else f"{w.start + 1:,}-{w.start + w.prompts:,}",
            f"{w.accuracy:.1%}",
            f"{w.strong_accuracy:.1%}",
            f"{w.retained:.1%}",
            f"{w.strong_answers / w.prompts:.1%}",
            f"{w.strong_calls / w.prompts:.1%}",
            f"{w.free_labels} / {w.cheap_shadows} / {w.paid_shadows}",
            f"{w.shadow_calls / w.prompts:.1%}",
            display_usd(w.cost),
            display_usd(w.verification_cost),
            "" if last else f"{w.strong_share_setting:.0%}",
            style="bold" if last else None,
        )
    return table


def summary_lines(report: OnlineReport) -> list[str]:
    o, total = report.options, report.total
    after = [w for w in report.windows if w.start >= WARM_UP and w.prompts == o.window]
    worst = min((w.retained for w in after), default=None)
    met = sum(w.retained >= o.target for w in after)
    lines = [
        f"APGR of the routed traffic {report.apgr_routed:.3f} (static prior {report.apgr_prior:.3f}, "
        f"length heuristic {report.apgr_length:.3f}, on the same stream)",
        "with every label of the stream (hindsight, not deployable): "
        + ", ".join(f"{name} {value:.3f}" for name, value in report.apgr_hindsight.items()),
        f"strong model: {total.strong_answers / total.prompts:.1%} of answers, "
        f"{total.strong_calls / total.prompts:.1%} of prompts as calls including paid shadow calls; "
        f"shadow calls on {total.shadow_calls / total.prompts:.2%} of prompts "
        f"({total.cheap_shadows} cheap, {total.paid_shadows} paid), {total.free_labels} free labels; "
        f"strong share at the end {report.final_share:.0%}",
        _cost_line(report),
    ]
    if worst is not None:
        lines.append(
            f"full windows of {o.window} after the first {WARM_UP:,}: {met} of {len(after)} keep "
            f">= {o.target:.0%} of the strong model's accuracy (worst {worst:.1%})"
        )
    if o.learn and o.mode == "router":
        at = ", ".join(f"{p + 1:,}" for p in report.switched_at)
        state = (
            f"challenger's e-value {report.challenger_evidence:.2f} at the end "
            f"(switches at >= {1 / (1 - o.confidence):.0f}), {report.challenger_labels} labelled examples"
        )
        lines.append(
            f"learned ranking switched in at prompt {at}; {state}"
            if at
            else f"learned ranking: never switched in; {state}"
        )
    if report.flagged_at is not None:
        lines.append(f"router flagged at prompt {report.flagged_at + 1:,}: {report.health_reason}")
    else:
        lines.append(f"router health: {report.health_reason or 'no verified outcomes'}")
    return lines


def _cost_line(report: OnlineReport) -> str:
    cost, all_strong = display_usd(report.total.cost), display_usd(report.all_strong_cost)
    verification = f"verification included ({display_usd(report.total.verification_cost)})"
    if not report.all_strong_cost:  # models priced 0/0 (--price): no share of nothing
        return f"cost {cost} (all-strong {all_strong}), {verification}"
    share = float(report.total.cost / report.all_strong_cost)
    return f"cost {cost} = {share:.1%} of all-strong ({all_strong}), {verification}"


def _window_json(w: Window) -> dict[str, Any]:
    return {
        "start": w.start,
        "prompts": w.prompts,
        "accuracy": w.accuracy,
        "strong_accuracy": w.strong_accuracy,
        "retained": w.retained,
        "strong_answers": w.strong_answers,
        "strong_calls_with_verification": w.strong_calls,
        "free_labels": w.free_labels,
        "cheap_shadow_calls": w.cheap_shadows,
        "paid_shadow_calls": w.paid_shadows,
        "cost_usd": str(w.cost),
        "verification_cost_usd": str(w.verification_cost),
        "strong_share_at_start": w.strong_share_setting,
    }


def report_json(report: OnlineReport) -> dict[str, Any]:
    o = report.options
    return {
        "data": report.data,
        "mode": report.mode,
        "options": {
            "target": o.target,
            "confidence": o.confidence,
            "verify_share": o.verify_share,
            "frontier": o.frontier,
            "rest_ratio": o.rest_ratio,
            "free_labels": o.free_labels,
            "prior_count": o.prior_count,
            "window": o.window,
            "seed": o.seed,
            "order": o.order,
            "learn": o.learn,
            "fallback": o.fallback,
        },
        "prompts": report.prompts,
        "strong": report.pair.strong,
        "weak": report.pair.weak,
        "apgr_routed": report.apgr_routed,
        "apgr_prior": report.apgr_prior,
        "apgr_length": report.apgr_length,
        "apgr_hindsight": report.apgr_hindsight,
        "all_strong_cost_usd": str(report.all_strong_cost),
        "total": _window_json(report.total),
        "windows": [_window_json(w) for w in report.windows],
        "flagged_at": report.flagged_at,
        "switched_at": report.switched_at,
        "challenger_evidence": report.challenger_evidence,
        "challenger_labels": report.challenger_labels,
        "health": report.health_reason,
        "final_strong_share": report.final_share,
    }
