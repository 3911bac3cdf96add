"""Summarise eval answers per model and compare models pairwise; render and save the results.

Quality is scored over every item (a failed request scores 0: a model that errors is worse for
it). Latency, tokens and cost are over the answered requests only. Cost per 1,000 requests and
the monthly projection are exact Decimals from the gateway's own per-request costs.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from decimal import Decimal
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from faregate.evals.eval_runner import Answer, EvalItem
from faregate.evals.projection import format_usd
from faregate.evals.scorers import is_binary, score
from faregate.evals.stats import Comparison, Interval, compare, t_interval, wilson

RESULTS_CSV = "results.csv"
SUMMARY_JSON = "summary.json"


@dataclass(slots=True)
class ModelSummary:
    model: str
    items: int
    answered: int
    errors: int
    quality: Interval
    latency_p50_s: float
    latency_p95_s: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    total_cost: Decimal
    cost_per_1k: Decimal
    monthly_cost: Decimal


@dataclass(slots=True)
class EvalReport:
    scorer: str
    monthly_requests: int
    summaries: list[ModelSummary]
    comparisons: list[Comparison]
    scores: dict[str, list[float]]  # model -> score per item, in item order


def item_score(scorer: str, item: EvalItem, answer: Answer | None) -> float:
    if answer is None or not answer.ok:
        return 0.0
    if scorer == "llm-judge":
        return answer.judge_score if answer.judge_score is not None else 0.0
    return score(scorer, answer.text, item.expected)


def _summary(
    model: str, scores: list[float], answers: list[Answer], binary: bool, monthly_requests: int
) -> ModelSummary:
    ok = [a for a in answers if a.ok]
    quality = wilson(sum(1 for s in scores if s >= 0.5), len(scores)) if binary else t_interval(scores)
    latencies = np.asarray([a.latency_s for a in ok], dtype=float)
    p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95])) if ok else (float("nan"),) * 2
    total = sum((a.cost for a in ok), Decimal(0))

    # Multiply before dividing: the only inexact step is the one division by the request count
    # (a mean can repeat forever; Decimal keeps 28 significant digits). Display rounds, JSON does not.
    def scaled(volume: int) -> Decimal:
        return total * volume / len(ok) if ok else Decimal(0)

    return ModelSummary(
        model=model,
        items=len(scores),
        answered=len(ok),
        errors=len(answers) - len(ok),
        quality=quality,
        latency_p50_s=p50,
        latency_p95_s=p95,
        mean_prompt_tokens=float(np.mean([a.prompt_tokens for a in ok])) if ok else 0.0,
        mean_completion_tokens=float(np.mean([a.completion_tokens for a in ok])) if ok else 0.0,
        total_cost=total,
        cost_per_1k=scaled(1000),
        monthly_cost=scaled(monthly_requests),
    )


def _ok(answers: dict[tuple[str, str], Answer], item: EvalItem, model: str) -> bool:
    answer = answers.get((item.id, model))
    return answer is not None and answer.ok


def build_report(
    items: list[EvalItem],
    models: list[str],
    answers: dict[tuple[str, str], Answer],
    scorer: str,
    monthly_requests: int,
) -> EvalReport:
    binary = is_binary(scorer)
    scores = {m: [item_score(scorer, item, answers.get((item.id, m))) for item in items] for m in models}
    summaries = [
        _summary(
            m,
            scores[m],
            [a for item in items if (a := answers.get((item.id, m))) is not None],
            binary,
            monthly_requests,
        )
        for m in models
    ]
    comparisons = []
    for first, second in combinations(models, 2):
        # Pair only items both models answered: a request error is not evidence about quality.
        both = [i for i, item in enumerate(items) if _ok(answers, item, first) and _ok(answers, item, second)]
        comparisons.append(
            compare(
                first, [scores[first][i] for i in both], second, [scores[second][i] for i in both], binary
            )
        )
    return EvalReport(scorer, monthly_requests, summaries, comparisons, scores)


def _money(amount: Decimal) -> str:
    # Display only: at most 6 decimals in the table; the JSON keeps every digit.
    return format_usd(amount.quantize(Decimal("0.000001")).normalize())


def _quality(summary: ModelSummary, binary: bool) -> str:
    q = summary.quality
    if binary:
        return f"{q.estimate:.1%} [{q.low:.1%}, {q.high:.1%}]"
    return f"{q.estimate:.3f} [{q.low:.3f}, {q.high:.3f}]"


def table(report: EvalReport) -> Table:
    binary = is_binary(report.scorer)
    kind = "pass rate, Wilson 95% CI" if binary else "mean score, t 95% CI"
    out = Table(title=f"faregate eval · scorer {report.scorer}")
    out.add_column("model")
    for column in (
        f"quality ({kind})",
        "answered",
        "errors",
        "p50 s",
        "p95 s",
        "tokens in/out",
        "cost / 1k req",
        f"monthly @ {report.monthly_requests:,}",
    ):
        out.add_column(column, justify="right")
    for s in report.summaries:
        out.add_row(
            s.model,
            _quality(s, binary),
            f"{s.answered}/{s.items}",
            str(s.errors),
            f"{s.latency_p50_s:.3f}",
            f"{s.latency_p95_s:.3f}",
            f"{s.mean_prompt_tokens:.0f}/{s.mean_completion_tokens:.0f}",
            _money(s.cost_per_1k),
            _money(s.monthly_cost),
        )
    return out


def comparison_lines(report: EvalReport) -> list[str]:
    return [c.verdict() for c in report.comparisons]


def _interval(q: Interval) -> dict[str, float | None]:
    def clean(value: float) -> float | None:
        return None if value != value else value  # NaN is not valid JSON

    return {"estimate": clean(q.estimate), "low": clean(q.low), "high": clean(q.high)}


def _usd(amount: Decimal) -> str:
    # Positional text without trailing zeros ("680.375", never "6.80375E+2").
    return format(amount.normalize(), "f")


def to_json(report: EvalReport) -> dict[str, Any]:
    return {
        "scorer": report.scorer,
        "monthly_requests": report.monthly_requests,
        "models": [
            {
                "model": s.model,
                "items": s.items,
                "answered": s.answered,
                "errors": s.errors,
                "quality": _interval(s.quality),
                "latency_p50_s": s.latency_p50_s if s.answered else None,
                "latency_p95_s": s.latency_p95_s if s.answered else None,
                "mean_prompt_tokens": s.mean_prompt_tokens,
                "mean_completion_tokens": s.mean_completion_tokens,
                # Money as exact decimal strings, never floats.
                "total_cost_usd": _usd(s.total_cost),
                "cost_per_1k_requests_usd": _usd(s.cost_per_1k),
                "monthly_cost_usd": _usd(s.monthly_cost),
            }
            for s in report.summaries
        ],
        "comparisons": [
            {
                "a": c.a,
                "b": c.b,
                "n": c.n,
                "tests": [{"test": t.test, "statistic": t.statistic, "p_value": t.p_value} for t in c.tests],
                "difference": _interval(c.difference),
                "only_a": c.only_a,
                "only_b": c.only_b,
                "significant": c.significant,
                "verdict": c.verdict(),
            }
            for c in report.comparisons
        ],
    }


def write_results(
    out: Path, report: EvalReport, items: list[EvalItem], answers: dict[tuple[str, str], Answer]
) -> None:
    """results.csv: one row per (item, model) with its score; summary.json: the table and tests."""
    with (out / RESULTS_CSV).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "item_id",
                "tags",
                "model",
                "score",
                "error",
                "latency_s",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
                "answer",
            ]
        )
        for model, scores in report.scores.items():
            for item, value in zip(items, scores, strict=True):
                a = answers.get((item.id, model))
                writer.writerow(
                    [
                        item.id,
                        ",".join(item.tags),
                        model,
                        value,
                        "" if a is None else a.error or "",
                        "" if a is None else f"{a.latency_s:.4f}",
                        "" if a is None else a.prompt_tokens,
                        "" if a is None else a.completion_tokens,
                        "" if a is None else a.cost_usd,
                        "" if a is None else a.text,
                    ]
                )
    (out / SUMMARY_JSON).write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
