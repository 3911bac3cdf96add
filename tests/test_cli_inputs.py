"""Measuring commands' numeric options: a value the command cannot mean is a one-line usage error
(exit 2), said before any data is loaded or any model is embedded."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from faregate.cli import cache_eval
from faregate.cli import replay as replay_cli
from faregate.cli import router as router_cli
from faregate.cli.router_tables import print_evaluation
from faregate.evals.replay.engine import Pair
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL
from faregate.evals.replay.router_eval import Evaluation, Point


def _app(register: object) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py builds it."""

    register(app)  # type: ignore[operator]
    return app


@pytest.mark.parametrize("command", ["train", "train-judge"])
@pytest.mark.parametrize("repeats", ["0", "-1"])
def test_router_training_refuses_repeats_below_one(tmp_path: Path, command: str, repeats: str) -> None:
    # 0 silently meant the default (`repeats or default`); -1 made no folds, then said "no fold had
    # both models differ in accuracy", which blames the data.
    result = CliRunner().invoke(
        _app(router_cli.register),
        ["router", command, "--data", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "m.json"),
         "--repeats", repeats],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--repeats is a number of cross-validation repeats, 1 or more" in result.output


RATE = "--max-wrong-hit-rate is a share of lookups, strictly between 0 and 1"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--sizes", "0,-5", "--sizes takes whole numbers 0 or more"),
        ("--distinct", "-1", "--distinct is a number of questions, 0 or more"),
        ("--max-wrong-hit-rate", "0", RATE),
        ("--max-wrong-hit-rate", "1.5", RATE),
        ("--max-wrong-hit-rate", "-0.1", RATE),
    ],
)
def test_cache_eval_pairs_refuses_values_it_cannot_mean(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    # A negative size or count sliced the question pool from its end; a bound of 0 or 1.5 was run.
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text1,text2,label\nHow do I reset it?,How can I reset it?,1\n", encoding="utf-8")
    args = ["cache-eval", "--data", str(tmp_path / "no-data"), "--pairs", str(pairs), "--sizes", "0"]
    args += ["--distinct", "0", "--cache-dir", str(tmp_path / "vectors"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(_app(cache_eval.register), [*args, option, value])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_router_eval_operating_points_on_data_the_strong_model_never_gets_right() -> None:
    # "of strong accuracy" divided by the strong model's accuracy unguarded: ZeroDivisionError.
    evaluation = Evaluation(
        data="hard.csv",
        split={"by": "row", "seed": 0, "test_fraction": 0.5},
        pair=Pair(),
        prompts=2,
        strong_accuracy=0.0,
        weak_accuracy=0.0,
        all_strong_cost=Decimal("0.02"),
        all_weak_cost=Decimal("0.001"),
        curves=[],
        reference=[],
        points=[Point("complexity router at 95%", 0.5, 0.0, Decimal("0.01"))],
    )
    output = io.StringIO()
    print_evaluation(evaluation, Console(file=output, width=200))
    (row,) = [line for line in output.getvalue().splitlines() if "complexity router at 95%" in line]
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["complexity router at 95%", "50.0%", "0.0%", "-", "50.0%"]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_missing_contaminated_list_is_a_usage_error(tmp_path: Path, command: str) -> None:
    # It was opened bare: FileNotFoundError, one line from cli/main.py but exit code 1, where a
    # missing --data is a usage error (2).
    data = tmp_path / "outcomes.csv"
    data.write_text(f"prompt,{STRONG_MODEL},{WEAK_MODEL}\nq1,True,False\n", encoding="utf-8")
    missing = tmp_path / "contaminated.jsonl"
    args = ["router", command, "--data", str(data), "--contaminated", str(missing)]
    args += ["--out", str(tmp_path / ("m.json" if command == "train" else "out"))]
    result = CliRunner().invoke(_app(router_cli.register), args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"{missing} does not exist" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--confidence", "0"),
        ("--confidence", "0.3"),
        ("--confidence", "1"),
        ("--confidence", "1.5"),
        ("--confidence", "-0.1"),
        ("--warm-passes", "-1"),
        ("--prior-lookups", "-5"),
        ("--prior-orders", "0"),
    ],
)
def test_cache_eval_pairs_refuses_counts_and_confidences_out_of_range(
    tmp_path: Path, option: str, value: str
) -> None:
    # Confidence 0 certified a bound (exit 0; the config takes 0.5 to below 1), 1.5 failed after
    # embedding as "confidence must be in (0, 1), got 1.05"; -1 warm passes ran as 0; -5 prior
    # lookups failed after embedding, naming no option; 0 prior orders replayed no stream for the prior.
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text1,text2,label\nHow do I reset it?,How can I reset it?,1\n", encoding="utf-8")
    args = ["cache-eval", "--data", str(tmp_path / "no-data"), "--pairs", str(pairs), "--sizes", "0"]
    args += ["--distinct", "0", "--cache-dir", str(tmp_path / "vectors"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(_app(cache_eval.register), [*args, option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "vectors").exists()  # refused before anything was embedded


@pytest.mark.parametrize("value", ["0", "-1"])
def test_cache_eval_limit_is_one_question_or_more(tmp_path: Path, value: str) -> None:
    # `prompts[:limit] if limit`: 0 meant every question and -1 all but the last.
    data = tmp_path / "no-data"
    result = CliRunner().invoke(
        _app(cache_eval.register), ["cache-eval", "--data", str(data), "--limit", value]
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--limit'" in result.output


@pytest.mark.parametrize("command", ["train", "train-judge"])
@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_router_training_refuses_a_test_fraction_outside_zero_to_one(
    tmp_path: Path, command: str, value: str
) -> None:
    # Refused only after the outcomes were loaded, as "test fraction must be within (0, 1)",
    # naming no option.
    result = CliRunner().invoke(
        _app(router_cli.register),
        ["router", command, "--data", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "m.json"),
         "--test-fraction", value],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--test-fraction'" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--confidence", "0.3"),
        ("--confidence", "1"),
        ("--confidence", "1.5"),
        ("--target", "0"),
        ("--target", "1.5"),
        ("--verify-share", "0"),
        ("--verify-share", "2"),
        ("--frontier", "-0.1"),
        ("--frontier", "1.5"),
        ("--rest-ratio", "0"),
        ("--rest-ratio", "1.5"),
        ("--prior", "-1"),
        ("--window", "0"),
        ("--window", "-5"),
        ("--order", "sorted"),
        ("--bins", "0"),
    ],
)
def test_replay_refuses_online_numbers_out_of_range(tmp_path: Path, option: str, value: str) -> None:
    # They failed only after the outcomes were loaded (or the model file embedded the stream), as
    # "confidence must be in (0, 1), got 1.5" or "rest_ratio must be in (0, 1] and frontier in
    # [0, 1]", naming no option; --confidence 0.3 ran (the config refuses below 0.5); --bins 0 said
    # "APGR needs at least two points".
    args = ["replay", "--online", "--data", str(tmp_path / "absent.csv"), "--policy", "router:m.json"]
    result = CliRunner().invoke(_app(replay_cli.register), [*args, option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


@pytest.mark.parametrize(
    ("option", "value"), [("--latency-samples", "0"), ("--latency-samples", "-1"), ("--pad-to", "-1")]
)
def test_cache_eval_refuses_latency_counts_below_range(tmp_path: Path, option: str, value: str) -> None:
    # -1 latency samples failed after every set was embedded (rng.choice of -1) and timed all but the
    # last paraphrase; 0 failed on the percentile of no timings; a negative --pad-to meant 0.
    result = CliRunner().invoke(
        _app(cache_eval.register), ["cache-eval", "--data", str(tmp_path / "no-data"), option, value]
    )
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
