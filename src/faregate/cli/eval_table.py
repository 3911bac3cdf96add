"""How `faregate eval` shows its report in the terminal: the per-model table and the summary lines."""

from __future__ import annotations

from decimal import Decimal

from rich.table import Table
from rich.text import Text

from faregate.evals.costs.projection import display_usd
from faregate.evals.prompt_eval.report import RESULTS_CSV, EvalReport, ModelSummary
from faregate.evals.prompt_eval.scorers import is_binary


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
            Text(s.model),  # a model's name is not rich markup
            _quality(s, binary),
            f"{s.answered}/{s.items}",
            str(s.errors),
            *([str(s.unscored)] if report.judged else []),
            *_measured(s, report.judged),
        )
    return out


def _measured(s: ModelSummary, judged: bool) -> list[str]:
    """Latency, tokens and cost: measured on the answers, so "-" for a model that answered
    nothing (it read "nan" and "$0.00", a price for what was never measured)."""
    if not s.answered:
        return ["-"] * (6 if judged else 5)
    return [
        f"{s.latency_p50_s:.3f}",
        f"{s.latency_p95_s:.3f}",
        f"{s.mean_prompt_tokens:.0f}/{s.mean_completion_tokens:.0f}",
        _money(s.cost_per_1k),
        _money(s.monthly_cost),
        *([_money(s.judge.per_1k if s.judge else Decimal(0))] if judged else []),
    ]


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
