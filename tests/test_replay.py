from __future__ import annotations

import csv
import json
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from faregate import tokens
from faregate.cli import replay as replay_cli
from faregate.evals.replay.engine import (
    CurvePoint,
    Pair,
    always,
    evaluate_router,
    evaluate_scorer,
    length_score,
    oracle_router,
    random_score,
    replay,
    share_reaching,
)
from faregate.evals.replay.outcomes import (
    STRONG_MODEL,
    WEAK_MODEL,
    Outcomes,
    PromptRecord,
    load_outcomes,
    prompt_tokens,
    select,
    subjects,
)
from faregate.types import Price

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "routing_tiny.csv"
DATA = Path(__file__).resolve().parents[1] / "data" / "routellm"
GSM8K = DATA / "gsm8k_responses.csv"
MMLU = DATA / "mmlu"

PAIR = Pair(strong="big", weak="small")
# Strong: 1,000 in + 500 out at 10/30 = $0.01 + $0.015 = $0.025. Weak: 2,000 tokens at 0.60 = $0.0012.
PRICES = {"big": Price(Decimal("10.00"), Decimal("30.00")), "small": Price(Decimal("0.60"), Decimal("0.60"))}

# The tiny fixture: prompt k (k = 1..10) is k characters long, so the length score is k.
#   k:     1  2  3  4  5  6  7  8  9  10
#   big:   1  0  1  1  0  1  1  1  0  1   -> 7/10 = 0.7
#   small: 1  0  0  1  1  0  1  0  0  0   -> 4/10 = 0.4; gap 0.3
BIG = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
SMALL = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0]


def tiny_outcomes() -> Outcomes:
    """The fixture's outcomes with round token counts, so costs can be worked by hand."""
    records = [
        PromptRecord(
            prompt="abcdefghij"[k - 1] * k,
            source="tiny",
            correct={"big": bool(BIG[k - 1]), "small": bool(SMALL[k - 1])},
            input_tokens=1_000,
            output_tokens={"big": 500, "small": 1_000},
        )
        for k in range(1, 11)
    ]
    return Outcomes("tiny", ("small", "big"), records)


def test_tiny_fixture_file_matches_the_table() -> None:
    loaded = load_outcomes(TINY, drop_contaminated=False)
    assert loaded.models == ("small", "big")
    assert [r.correct["big"] for r in loaded.records] == [bool(b) for b in BIG]
    assert [r.correct["small"] for r in loaded.records] == [bool(s) for s in SMALL]
    first = loaded.records[0]
    # Output tokens are counted from the recorded answers; input as one user message.
    assert first.output_tokens["big"] == tokens.count_text("The big model's answer to question 1.")
    assert first.output_tokens["small"] == tokens.count_text("small answer 1")
    assert (
        first.input_tokens == prompt_tokens("a") == tokens.count_messages([{"role": "user", "content": "a"}])
    )


def test_threshold_sweep_against_hand_computed_pgr_cpt_apgr() -> None:
    report = evaluate_scorer(tiny_outcomes(), length_score, "length", PAIR, PRICES)
    assert report.strong_accuracy == pytest.approx(0.7)
    assert report.weak_accuracy == pytest.approx(0.4)
    sweep = report.sweep
    assert sweep is not None
    # Thresholds: quantiles of 1..10 at 0, 10%, ..., 100% = 1 + 9q: 1, 1.9, 2.8, ..., 9.1, 10.
    # Score >= t goes strong, except > 10 at the last. Shares then run 100%, 90%, ..., 0%.
    # Accuracy with the top-k prompts on big (k = 0..10), worked from the table:
    #   k=0: small all       4/10          k=6: big{5..10}=4 + small{1..4}=2 -> 6
    #   k=1: big{10}=1 + small{1..9}=4 -> 5 k=7: big{4..10}=5 + small{1..3}=1 -> 6
    #   k=2: big{9,10}=1 + 4 -> 5           k=8: big{3..10}=6 + small{1,2}=1 -> 7
    #   k=3: big{8..10}=2 + 4 -> 6          k=9: big{2..10}=6 + small{1}=1 -> 7
    #   k=4: big{7..10}=3 + small{1..6}=3 -> 6   k=10: big all 7
    #   k=5: big{6..10}=4 + small{1..5}=3 -> 7   (a dip after k=5: not monotone)
    expected = [4, 5, 5, 6, 6, 7, 6, 6, 7, 7, 7]
    assert [round(p.strong_share * 10) for p in sweep.points] == list(range(11))
    assert [round(p.accuracy * 10) for p in sweep.points] == expected
    assert [p.threshold for p in sweep.points] == pytest.approx(
        [10, 9.1, 8.2, 7.3, 6.4, 5.5, 4.6, 3.7, 2.8, 1.9, 1]
    )
    # PGR = (acc - 0.4) / 0.3: 0, 1/3, 1/3, 2/3, 2/3, 1, 2/3, 2/3, 1, 1, 1.
    pgrs = [report.pgr(p.accuracy) for p in sweep.points]
    assert pgrs == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 2 / 3, 2 / 3, 1, 1, 1])
    # APGR, trapezoids of width 0.1: 0.1 x (sum of PGRs - (first + last)/2) = 0.1 x (22/3 - 1/2) = 41/60.
    assert sweep.metrics.apgr == pytest.approx(41 / 60)
    # CPT(50%): accuracy 0.55, first reached between (0.2, 0.5) and (0.3, 0.6) -> 0.25.
    # CPT(80%): accuracy 0.64, between (0.4, 0.6) and (0.5, 0.7) -> 0.44.
    assert sweep.metrics.cpt[0.5] == pytest.approx(0.25)
    assert sweep.metrics.cpt[0.8] == pytest.approx(0.44)
    # 95% of 0.7 = 0.665: on the exact curve the first threshold reaching it sends 5 prompts (score >= 6)
    # to big: share 0.5, accuracy 0.7; no interpolation (0.465 would not be a threshold one can set).
    assert sweep.metrics.retain_share == pytest.approx(0.5)
    assert sweep.retain_point is not None and sweep.retain_point.threshold == 6
    # Cost there: 5 x $0.025 + 5 x $0.0012 = $0.131, exactly.
    assert sweep.retain_point.cost == Decimal("0.131")
    assert report.policy is not None and report.policy.cost == Decimal("0.131")
    assert sweep.points[-1].cost == Decimal("0.25")
    assert sweep.points[0].cost == Decimal("0.012")


def test_baselines_on_the_tiny_fixture() -> None:
    report = evaluate_scorer(tiny_outcomes(), length_score, "length", PAIR, PRICES)
    by_name = {b.name: b for b in report.baselines}
    assert by_name["all-strong"].cost == Decimal("0.25")
    assert by_name["all-weak"].cost == Decimal("0.012")
    # Random at 50%, as an expectation: half of each, exactly.
    random = by_name["random 50%"]
    assert random.expected and random.cost == Decimal("0.131")
    assert random.accuracy == pytest.approx(0.55)
    # Oracle: big only for k = 3, 6, 8, 10 (small wrong, big right): 4 calls, accuracy 0.4 + 0.4.
    oracle = by_name["oracle"]
    assert oracle.share("big") == pytest.approx(0.4)
    assert oracle.accuracy == pytest.approx(0.8)
    assert oracle.cost == 4 * Decimal("0.025") + 6 * Decimal("0.0012")
    reference = {m.name: m for m in report.reference}
    # Random: a straight line from weak to strong; APGR 0.5, CPT(x) = x, 95% at (0.665 - 0.4)/0.3.
    assert reference["random"].apgr == pytest.approx(0.5)
    assert reference["random"].cpt == pytest.approx({0.5: 0.5, 0.8: 0.8})
    assert reference["random"].retain_share == pytest.approx(0.265 / 0.3)
    # Oracle: (0, 0.4) -> (0.4, 0.8) -> (1, 0.8); PGR 0 -> 4/3 -> 4/3.
    # Area 0.4 x (4/3)/2 + 0.6 x 4/3 = 16/15; CPT(50%) at accuracy 0.55 = 0.15, CPT(80%) at 0.64 = 0.24.
    assert reference["oracle"].apgr == pytest.approx(16 / 15)
    assert reference["oracle"].cpt == pytest.approx({0.5: 0.15, 0.8: 0.24})
    assert reference["oracle"].retain_share == pytest.approx(0.265)


def test_router_policies_report_shares_cost_and_accuracy() -> None:
    outcomes = tiny_outcomes()
    mixed = replay(outcomes, lambda r: "big" if len(r.prompt) % 2 else "small", PRICES, "odd-big")
    # Odd k on big: 1, 3, 7 right (of 1, 3, 5, 7, 9); even k on small: only 4 right. 4/10.
    assert mixed.shares == {"big": 0.5, "small": 0.5}
    assert mixed.accuracy == pytest.approx(0.4)
    assert mixed.cost == Decimal("0.131")
    report = evaluate_router(outcomes, oracle_router(PAIR), "oracle", PAIR, PRICES)
    assert report.policy is not None and report.policy.accuracy == pytest.approx(0.8)
    assert replay(outcomes, always("big"), PRICES, "big").accuracy == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no recorded outcome"):
        replay(outcomes, always("nobody"), PRICES, "bad")
    with pytest.raises(ValueError, match="no price"):
        replay(outcomes, always("big"), {"small": PRICES["small"]}, "unpriced")


def test_share_reaching_interpolates_like_np_interp_on_a_rising_curve() -> None:
    curve = [CurvePoint(0.0, 0.4), CurvePoint(0.3, 0.5), CurvePoint(0.6, 0.65), CurvePoint(1.0, 0.7)]
    for target in (0.42, 0.5, 0.55, 0.69):
        expected = np.interp(target, [p.accuracy for p in curve], [p.strong_share for p in curve])
        assert share_reaching(curve, target) == pytest.approx(float(expected))
    assert share_reaching(curve, 0.71) is None


def test_contaminated_prompts_are_an_explicit_choice(tmp_path: Path) -> None:
    kept = load_outcomes(TINY, drop_contaminated=False)
    dropped = load_outcomes(TINY, drop_contaminated=True)
    assert (len(kept), len(dropped), dropped.contaminated_skipped) == (10, 9, 1)
    assert "ccc" not in [r.prompt for r in dropped.records]
    lonely = tmp_path / "lonely.csv"
    lonely.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match="no contaminated-prompt list"):
        load_outcomes(lonely, drop_contaminated=True)
    explicit = load_outcomes(
        lonely, drop_contaminated=True, contaminated=FIXTURES / "routing_tiny_contaminated_prompts.jsonl"
    )
    assert len(explicit) == 9


def test_a_directory_without_answers_assumes_the_output_tokens_given(tmp_path: Path) -> None:
    folder = tmp_path / "quiz"
    folder.mkdir()
    for subject, rows in {"quiz_a": [("Q1?", "True", "False")], "quiz_b": [("Q2?", "False", "True")]}.items():
        with (folder / f"{subject}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt", WEAK_MODEL, STRONG_MODEL])
            writer.writerows(rows)
    loaded = load_outcomes(folder, drop_contaminated=False)
    assert subjects(loaded) == ["quiz_a", "quiz_b"]
    assert [r.output_tokens for r in loaded.records] == [{WEAK_MODEL: 1, STRONG_MODEL: 1}] * 2
    five = load_outcomes(folder, drop_contaminated=False, output_tokens=5)
    assert five.records[0].output_tokens[STRONG_MODEL] == 5
    assert len(select(loaded, ["quiz_b"])) == 1
    (folder / "quiz_c.csv").write_text("prompt,other\nQ3?,True\n", encoding="utf-8")
    with pytest.raises(ValueError, match="differ"):
        load_outcomes(folder, drop_contaminated=False)


def test_random_score_is_repeatable_and_uniform_ish() -> None:
    outcomes = tiny_outcomes()
    first = [random_score(1)(r) for r in outcomes.records]
    assert first == [random_score(1)(r) for r in outcomes.records]
    assert first != [random_score(2)(r) for r in outcomes.records]
    assert all(0 <= s < 1 for s in first)


# -- the recorded GSM8K and MMLU outcomes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k_all() -> Outcomes:
    return load_outcomes(GSM8K, drop_contaminated=False)


def test_all_strong_and_all_weak_over_all_1319_gsm8k_questions(gsm8k_all: Outcomes) -> None:
    # The issue's figures are over every question, contaminated ones included.
    report = evaluate_router(gsm8k_all, always(STRONG_MODEL), "all-strong")
    assert report.prompts == 1_319
    rows = {b.name: b for b in report.baselines}
    assert f"{rows['all-strong'].accuracy:.1%}" == "85.7%"
    assert f"{rows['all-weak'].accuracy:.1%}" == "63.8%"
    assert round(rows["all-strong"].accuracy * 1_319) == 1_130
    assert round(rows["all-weak"].accuracy * 1_319) == 842
    decontaminated = load_outcomes(GSM8K, drop_contaminated=True)
    assert (len(decontaminated), decontaminated.contaminated_skipped) == (1_307, 12)


def _routellm_apgr(path: Path) -> float:
    """RouteLLM's computation written out independently, straight from the CSV (no faregate code)."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    rows = [row for f in files for row in csv.DictReader(f.open(encoding="utf-8", newline=""))]
    scores = np.array([len(r["prompt"]) for r in rows], dtype=float)
    strong = np.array([r[STRONG_MODEL] == "True" for r in rows])
    weak = np.array([r[WEAK_MODEL] == "True" for r in rows])
    edges = np.quantile(scores, np.linspace(0, 1, 11))
    points = []
    for i, t in enumerate(edges):
        chosen = scores >= t if i < 10 else scores > t
        points.append((float(chosen.mean()), float(np.where(chosen, strong, weak).mean())))
    points.sort()
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return (auc - float(weak.mean())) / float(strong.mean() - weak.mean())


def test_length_heuristic_on_gsm8k_matches_routellm_and_issue_7(gsm8k_all: Outcomes) -> None:
    report = evaluate_scorer(gsm8k_all, length_score, "length")
    assert report.sweep is not None
    metrics = report.sweep.metrics
    assert metrics.apgr == pytest.approx(_routellm_apgr(GSM8K), abs=1e-12)
    assert metrics.apgr == pytest.approx(0.60, abs=0.005)
    # About 67% of calls on GPT-4 keep 95% of its accuracy.
    assert metrics.retain_share == pytest.approx(0.67, abs=0.01)
    # CPT the way RouteLLM computes it: np.interp over the (rising) accuracy curve.
    accuracy = [p.accuracy for p in report.sweep.points]
    assert accuracy == sorted(accuracy)
    share = [p.strong_share for p in report.sweep.points]
    for target in (0.5, 0.8):
        goal = report.weak_accuracy + target * (report.strong_accuracy - report.weak_accuracy)
        assert metrics.cpt[target] == pytest.approx(float(np.interp(goal, accuracy, share)))
    reference = {m.name: m for m in report.reference}
    assert reference["random"].apgr == pytest.approx(0.5)
    assert reference["oracle"].apgr > 1


def test_length_heuristic_on_the_40_mmlu_subjects() -> None:
    mmlu = load_outcomes(MMLU, drop_contaminated=False)
    assert len(subjects(mmlu)) == 40
    report = evaluate_scorer(mmlu, length_score, "length")
    assert report.sweep is not None
    assert report.sweep.metrics.apgr == pytest.approx(_routellm_apgr(MMLU), abs=1e-12)
    assert report.sweep.metrics.apgr == pytest.approx(0.536, abs=0.005)


# -- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py will build it."""

    replay_cli.register(app)
    return app


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "220"})


def test_replay_command_prints_metrics_and_writes_plot_and_json(app: typer.Typer, tmp_path: Path) -> None:
    plot, report = tmp_path / "curve.png", tmp_path / "report.json"
    result = run(
        app, "replay", "--data", str(TINY), "--strong", "big", "--weak", "small", "--keep-contaminated",
        "--policy", "length", "--plot", str(plot), "--json", str(report),
        "--price", "big=10/30", "--price", "small=0.60/0.60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0.683" in result.output  # APGR 41/60
    assert "25.0%" in result.output and "44.0%" in result.output  # CPT(50%), CPT(80%)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["metrics"]["apgr"] == pytest.approx(41 / 60)
    assert data["prompts"] == 10
    assert len(data["curve"]) == 11


def test_replay_command_router_policies_and_plugins(app: typer.Typer) -> None:
    common = ["replay", "--data", str(TINY), "--strong", "big", "--weak", "small", "--price", "big=10/30",
              "--price", "small=1/1"]  # fmt: skip
    oracle = run(app, *common, "--policy", "oracle")
    assert oracle.exit_code == 0, oracle.output
    assert "9 prompts (1 contaminated left out)" in oracle.output
    plugin = run(app, *common, "--policy", "faregate.evals.replay.engine:length_score")
    assert plugin.exit_code == 0, plugin.output
    assert "APGR" in plugin.output
    unknown = run(app, *common, "--policy", "cleverest")
    assert unknown.exit_code == 2
    assert "unknown policy" in unknown.output
    unpriced = run(app, "replay", "--data", str(TINY), "--strong", "big", "--weak", "small")
    assert unpriced.exit_code == 2
    assert "no price for" in unpriced.output


def test_a_weak_model_that_already_keeps_95_percent_names_the_all_weak_operating_point(
    app: typer.Typer,
) -> None:
    # Here "strong" (small, 40%) is the worse model: sending nobody to it keeps 95% of its
    # accuracy, so the cheapest point is the sweep's first one, which has no threshold.
    result = run(
        app, "replay", "--data", str(TINY), "--strong", "small", "--weak", "big", "--keep-contaminated",
        "--policy", "length", "--price", "big=10/30", "--price", "small=0.60/0.60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "length: nobody strong (keeps 95% of strong)" in result.output


def test_a_plug_in_policy_is_found_in_the_working_directory(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The installed console script's sys.path holds its bin directory, not the working directory:
    # `--policy mypolicy:score` with mypolicy.py right here was "No module named 'mypolicy'".
    (tmp_path / "evalcli_local_policy.py").write_text(
        "def score(record):\n    return float(len(record.prompt))\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "evalcli_local_policy", raising=False)
    result = run(
        app, "replay", "--data", str(TINY), "--strong", "big", "--weak", "small", "--keep-contaminated",
        "--policy", "evalcli_local_policy:score", "--price", "big=10/30", "--price", "small=0.60/0.60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0.683" in result.output  # the length heuristic's APGR, as the built-in one


@pytest.mark.parametrize(
    ("rows", "line"),
    [
        ("big,small,prompt\nTrue,False,hello\nTrue,False\n", 3),  # no prompt: None, then a TypeError
        ("prompt,big,small\nhello,True,False\nbye,True,False,extra\n", 3),  # a cell silently dropped
    ],
)
def test_a_row_whose_cells_do_not_match_the_header_is_named(tmp_path: Path, rows: str, line: int) -> None:
    data = tmp_path / "ragged.csv"
    data.write_text(rows, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"ragged\.csv:{line}: (more|fewer) cells than the header's 3"):
        load_outcomes(data, drop_contaminated=False)


def test_a_bad_label_is_named_by_its_line_in_the_file_not_its_row(tmp_path: Path) -> None:
    # Recorded answers span lines (GSM8K's do): row 3 here starts on line 5 of the file.
    data = tmp_path / "answers.csv"
    data.write_text(
        'prompt,big,big_response\nq1,True,"step 1\nstep 2\nso 4"\nq2,maybe,"5"\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"answers\.csv:5: column 'big': expected True or False"):
        load_outcomes(data, drop_contaminated=False)


@pytest.mark.parametrize("text", ["big=nan/30", "big=10/inf", "big=-10/30", "big=10/-0.5"])
def test_a_price_that_is_not_a_finite_amount_of_0_or_more_is_a_usage_error(text: str) -> None:
    # NaN reached the money formatting (decimal.InvalidOperation traceback); a negative price
    # made calls pay the replay.
    with pytest.raises(typer.BadParameter, match="expected MODEL=INPUT/OUTPUT"):
        replay_cli.parse_price(text)


def test_negative_output_tokens_are_a_usage_error(app: typer.Typer) -> None:
    # Priced as they were: MMLU's all-strong cost -$14.76.
    result = run(app, "replay", "--data", str(MMLU), "--policy", "all-strong", "--output-tokens", "-100")
    assert result.exit_code == 2, result.output
    assert "--output-tokens" in result.output
