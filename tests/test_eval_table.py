"""`faregate eval`'s terminal table: a model that answered nothing shows no figures it has not got."""

from __future__ import annotations

from rich.console import Console

from faregate.cli.eval_table import table
from faregate.evals.prompt_eval.report import build_report
from faregate.evals.prompt_eval.run import Answer, EvalItem


def test_a_model_that_answered_nothing_has_no_latency_tokens_or_cost() -> None:
    # Its row read "nan | nan | 0/0 | $0.00 | $0.00": a cost of nothing for a model that was never
    # measured, beside the others' real figures.
    items = [EvalItem(f"q{i}", [{"role": "user", "content": f"q{i}"}], expected="x") for i in range(2)]
    answers = {}
    for item in items:
        answers[item.id, "good"] = Answer(
            item.id, "good", "x", latency_s=0.25, prompt_tokens=10, completion_tokens=2, cost_usd="0.001"
        )
        answers[item.id, "broken"] = Answer(item.id, "broken", error="NotFoundError: no such model")
    report = build_report(items, ["good", "broken"], answers, "exact", 100_000)
    console = Console(width=250, record=True)
    console.print(table(report))
    lines = console.export_text().splitlines()
    good = next(line for line in lines if "│ good " in line)
    broken = next(line for line in lines if "│ broken " in line)
    assert "0.250" in good and "10/2" in good and "$1.00" in good and "$100.00" in good
    cells = [cell.strip() for cell in broken.strip("│ ").split("│")]
    assert cells[2:] == ["0/2", "2", "-", "-", "-", "-", "-"], cells
    assert "nan" not in broken and "$" not in broken
