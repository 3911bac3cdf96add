"""Summarise eval answers per model and compare models pairwise; render and save the results.

Quality is scored over every item (a failed request scores 0: a model that errors is worse for
it), except, with the LLM judge, answers the judge gave no readable score: those are *unscored*
(None), counted apart and left out of the mean, since a judge's failure says nothing about the
model. Latency, tokens and cost are over the answered requests only. Cost per 1,000 requests and
the monthly projection are exact Decimals from the gateway's own per-request costs; what the
judge calls cost is summed apart, as the cost of judging, never mixed into the model's cost.
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
from faregate.evals.projection import display_usd
from faregate.evals.scorers import is_binary, score
from faregate.evals.stats import Comparison, Interval, compare, t_interval, wilson

RESULTS_CSV = "results.csv"
SUMMARY_JSON = "summary.json"


@dataclass(slots=True, frozen=True)
class JudgeCost:
    """The cost of judging one model's answers: every judge call that got a reply, re-judges included."""

    calls: int
    total: Decimal

    @property
    def per_1k(self) -> Decimal:
        return self.total * 1000 / self.calls if self.calls else Decimal(0)


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
    # Answered, but the judge gave no readable score (llm-judge only; always 0 otherwise).
    unscored: int = 0
    judge: JudgeCost | None = None


@dataclass(slots=True)
class EvalReport:
    scorer: str
    monthly_requests: int
    summaries: list[ModelSummary]
    comparisons: list[Comparison]
    # model -> score per item, in item order; None: answered but not scored by the judge.
    scores: dict[str, list[float | None]]

    @property
    def judged(self) -> bool:
        return self.scorer == "llm-judge"

    @property
    def unscored(self) -> int:
        return sum(s.unscored for s in self.summaries)

    @property
    def judge_cost(self) -> JudgeCost:
        costs = [s.judge for s in self.summaries if s.judge is not None]
        return JudgeCost(sum(c.calls for c in costs), sum((c.total for c in costs), Decimal(0)))


def item_score(scorer: str, item: EvalItem, answer: Answer | None) -> float | None:
    if answer is None or not answer.ok:
        return 0.0
    if scorer == "llm-judge":
        # No readable score is not a score of 0: it is missing, and reported as such.
        return answer.judge_score
    return score(scorer, answer.text, item.expected)


def _within_score_range(q: Interval) -> Interval:
    """A t interval of a few spread scores can pass 0 or 1; every score is in [0, 1], so its mean
    is too, and cutting the interval there loses no coverage. NaN (no interval) stays NaN."""
    return Interval(q.estimate, max(0.0, q.low), min(1.0, q.high)) if q.low == q.low else q


def _summary(
    model: str,
    scores: list[float | None],
    answers: list[Answer],
    scorer: str,
    monthly_requests: int,
) -> ModelSummary:
    ok = [a for a in answers if a.ok]
    scored = [s for s in scores if s is not None]
    if is_binary(scorer):
        quality = wilson(sum(1 for s in scored if s >= 0.5), len(scored))
    else:
        quality = _within_score_range(t_interval(scored))
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
        unscored=len(scores) - len(scored),
        judge=(
            JudgeCost(sum(a.judge_calls for a in ok), sum((a.judge_cost for a in ok), Decimal(0)))
            if scorer == "llm-judge"
            else None
        ),
    )


def _ok(answers: dict[tuple[str, str], Answer], item: EvalItem, model: str) -> bool:
    answer = answers.get((item.id, model))
    return answer is not None and answer.ok


def _paired(scores: dict[str, list[float | None]], first: str, second: str, both: list[int]) -> list[int]:
    # Unscored items are not evidence either: pair only items both models have a score for.
    return [i for i in both if scores[first][i] is not None and scores[second][i] is not None]


def _values(scores: list[float | None], indexes: list[int]) -> list[float]:
    return [value for i in indexes if (value := scores[i]) is not None]


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
            scorer,
            monthly_requests,
        )
        for m in models
    ]
    comparisons = []
    for first, second in combinations(models, 2):
        # Pair only items both models answered: a request error is not evidence about quality.
        both = [i for i, item in enumerate(items) if _ok(answers, item, first) and _ok(answers, item, second)]
        both = _paired(scores, first, second, both)
        comparisons.append(
            compare(first, _values(scores[first], both), second, _values(scores[second], both), binary)
        )
    return EvalReport(scorer, monthly_requests, summaries, comparisons, scores)


def _money(amount: Decimal) -> str:
    # Display only: rounded in the table; the JSON and CSV keep every digit.
    return display_usd(amount)


def _quality(summary: ModelSummary, binary: bool) -> str:
    q = summary.quality
    if q.estimate != q.estimate:  # NaN: nothing was scored
        return "n/a (no scores)"
    if q.low != q.low:  # one score: a mean, but no interval
        return f"{q.estimate:.3f} [n=1, no CI]"
    if binary:
        return f"{q.estimate:.1%} [{q.low:.1%}, {q.high:.1%}]"
    return f"{q.estimate:.3f} [{q.low:.3f}, {q.high:.3f}]"


def table(report: EvalReport) -> Table:
    binary = is_binary(report.scorer)
    kind = "pass rate, Wilson 95% CI" if binary else "mean score, t 95% CI"
    out = Table(title=f"faregate eval · scorer {report.scorer}")
    out.add_column("model")
    columns = [
        f"quality ({kind})",
        "answered",
        "errors",
        *(["unscored"] if report.judged else []),
        "p50 s",
        "p95 s",
        "tokens in/out",
        "cost / 1k req",
        f"monthly @ {report.monthly_requests:,}",
        *(["judging / 1k req"] if report.judged else []),
    ]
    for column in columns:
        out.add_column(column, justify="right")
    for s in report.summaries:
        out.add_row(
            s.model,
            _quality(s, binary),
            f"{s.answered}/{s.items}",
            str(s.errors),
            *([str(s.unscored)] if report.judged else []),
            f"{s.latency_p50_s:.3f}",
            f"{s.latency_p95_s:.3f}",
            f"{s.mean_prompt_tokens:.0f}/{s.mean_completion_tokens:.0f}",
            _money(s.cost_per_1k),
            _money(s.monthly_cost),
            *([_money(s.judge.per_1k if s.judge else Decimal(0))] if report.judged else []),
        )
    return out


def comparison_lines(report: EvalReport) -> list[str]:
    return [c.verdict() for c in report.comparisons]


def judging_line(report: EvalReport) -> str | None:
    """What judging cost, apart from the models' own cost (llm-judge only)."""
    if not report.judged:
        return None
    cost = report.judge_cost
    return (
        f"cost of judging: {display_usd(cost.total)} over {cost.calls} judge calls "
        f"({_money(cost.per_1k)} per 1k judged requests); not included in the models' cost above."
    )


def unscored_line(report: EvalReport) -> str | None:
    """A warning when answers have no judge score: said plainly, never hidden as a 0."""
    if not report.unscored:
        return None
    count = "1 answer has" if report.unscored == 1 else f"{report.unscored} answers have"
    return (
        f"{count} no readable judge score (see judge_reply in {RESULTS_CSV}); left out of quality, "
        "not counted as 0. Re-run the same command to judge again."
    )


def _interval(q: Interval) -> dict[str, float | None]:
    def clean(value: float) -> float | None:
        return None if value != value else value  # NaN is not valid JSON

    return {"estimate": clean(q.estimate), "low": clean(q.low), "high": clean(q.high)}


def _usd(amount: Decimal) -> str:
    # Positional text without trailing zeros ("680.375", never "6.80375E+2").
    return format(amount.normalize(), "f")


def _judge_json(cost: JudgeCost | None) -> dict[str, Any]:
    if cost is None:
        return {}
    return {
        "judge_calls": cost.calls,
        "judge_total_cost_usd": _usd(cost.total),
        "judge_cost_per_1k_requests_usd": _usd(cost.per_1k),
    }


def to_json(report: EvalReport) -> dict[str, Any]:
    return {
        "scorer": report.scorer,
        "monthly_requests": report.monthly_requests,
        **({"judging": _judge_json(report.judge_cost)} if report.judged else {}),
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
                "unscored": s.unscored,
                **_judge_json(s.judge),
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
                "judge_reply",
                "judge_cost_usd",
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
                        "" if value is None else value,  # unscored: empty, never 0
                        "" if a is None else a.error or "",
                        "" if a is None else f"{a.latency_s:.4f}",
                        "" if a is None else a.prompt_tokens,
                        "" if a is None else a.completion_tokens,
                        "" if a is None else a.cost_usd,
                        "" if a is None else a.text,
                        "" if a is None or a.judge_reply is None else a.judge_reply,
                        "" if a is None or a.judged_by is None else a.judge_cost_usd,
                    ]
                )
    (out / SUMMARY_JSON).write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
