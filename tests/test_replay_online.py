"""`faregate replay --online`: the closed loop on recorded outcomes (vendored MMLU subjects)."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from faregate.cli import replay as replay_cli
from faregate.cli import replay_online
from faregate.cli.replay_online import report_json, summary_lines
from faregate.evals.replay.engine import DEFAULT_PRICES, Pair
from faregate.evals.replay.online import OnlineOptions, PriorCurve, run_online, stream_order
from faregate.evals.replay.online_setup import Prepared
from faregate.evals.replay.outcomes import Outcomes, load_outcomes, select
from faregate.learning.thresholds import CalibrationPoint
from faregate.types import Price

DATA = Path(__file__).parents[1] / "data" / "routellm"
SUBJECTS = (
    "mmlu_high_school_mathematics",  # recorded with GPT-4 far below Mixtral (3% vs 32%)
    "mmlu_conceptual_physics",
    "mmlu_high_school_microeconomics",
    "mmlu_college_biology",
)


@pytest.fixture(scope="module")
def stream() -> Outcomes:
    return select(load_outcomes(DATA / "mmlu", drop_contaminated=True), SUBJECTS)


def _inputs(outcomes: Outcomes, informative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vectors that say the subject (as MiniLM's do), and a prior that is noise or knows the truth."""
    rng = np.random.default_rng(0)
    centres = {s: rng.standard_normal(16) for s in SUBJECTS}
    vectors = np.stack([centres[r.source] + 0.3 * rng.standard_normal(16) for r in outcomes.records])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pair = Pair()
    truth = np.array([r.correct[pair.strong] and not r.correct[pair.weak] for r in outcomes.records], float)
    prior = truth + 0.3 * rng.random(len(truth)) if informative else rng.random(len(truth))
    return prior, vectors.astype(np.float32)


def test_stream_orders_are_seeded(stream: Outcomes) -> None:
    shuffled = stream_order(stream.records, "shuffled", 1)
    assert sorted(shuffled) == list(range(len(stream))) and shuffled == stream_order(
        stream.records, "shuffled", 1
    )
    by_source = stream_order(stream.records, "by-source", 1)
    sources = [stream.records[i].source for i in by_source]
    assert sum(a != b for a, b in itertools.pairwise(sources)) == len(SUBJECTS) - 1


def test_the_loop_keeps_the_target_and_charges_verification(stream: Outcomes) -> None:
    prior, vectors = _inputs(stream, informative=True)
    options = OnlineOptions(mode="router", target=0.95, verify_share=0.2, window=500, seed=0)
    report = run_online(stream, prior, vectors, Pair(), DEFAULT_PRICES, options)
    total = report.total
    assert total.prompts == len(stream) == sum(w.prompts for w in report.windows)
    # The pacing keeps shadow calls at the stated share of traffic, cheap and paid together.
    assert 0.18 < total.shadow_calls / total.prompts <= 0.21
    assert total.cheap_shadows > 0 and total.paid_shadows > 0 and total.free_labels == 0
    assert total.retained >= 0.95
    # An informative prior lets the calibration send real traffic to the cheap model...
    assert total.strong_answers < total.prompts * 0.9
    # ...and every shadow call is paid for: a paid one is a strong call, a cheap one is not.
    assert total.strong_calls == total.strong_answers + total.paid_shadows
    assert total.verification_cost > 0 and total.cost < report.all_strong_cost
    assert report.apgr_routed > 0.7
    data = report_json(report)
    assert data["total"]["paid_shadow_calls"] == total.paid_shadows
    assert len(data["windows"]) == len(report.windows)
    assert any("APGR of the routed traffic" in line for line in summary_lines(report))


def test_a_cascade_labels_its_escalations_for_free(stream: Outcomes) -> None:
    prior, vectors = _inputs(stream, informative=True)
    options = OnlineOptions(mode="cascade", verify_share=0.05)
    report = run_online(stream, prior, vectors, Pair(), DEFAULT_PRICES, options)
    total = report.total
    # Every escalation is a label at no extra call; only accepted answers need a paid one.
    assert total.free_labels == total.strong_answers and total.cheap_shadows == 0
    assert total.paid_shadows <= 0.06 * total.prompts
    assert total.strong_calls == total.strong_answers + total.paid_shadows
    assert total.retained >= 0.95 and total.strong_answers < total.prompts
    without = run_online(
        stream, prior, vectors, Pair(), DEFAULT_PRICES, OnlineOptions(mode="cascade", free_labels=False)
    )
    assert without.total.strong_answers > total.strong_answers  # free labels certify sooner


def test_a_useless_prior_keeps_every_request_on_the_strong_model(stream: Outcomes) -> None:
    prior, vectors = _inputs(stream, informative=False)
    options = OnlineOptions(mode="router", verify_share=0.05, fallback=False)
    report = run_online(stream, prior, vectors, Pair(), DEFAULT_PRICES, options)
    assert report.total.strong_answers >= 0.95 * report.total.prompts
    assert report.total.retained >= 0.95


def test_a_prior_curve_lets_a_fresh_route_save_from_the_start(stream: Outcomes) -> None:
    prior, vectors = _inputs(stream, informative=True)
    curve = PriorCurve(tuple(CalibrationPoint(s / 10, 0.9 + 0.01 * s, 0.0) for s in range(11)), 0.8)
    cold = OnlineOptions(mode="router", window=200)
    warm = OnlineOptions(mode="router", window=200, prior_count=200)
    first = run_online(stream, prior, vectors, Pair(), DEFAULT_PRICES, cold, prior_curve=curve).windows[0]
    primed = run_online(stream, prior, vectors, Pair(), DEFAULT_PRICES, warm, prior_curve=curve).windows[0]
    assert first.strong_answers == first.prompts and primed.strong_answers < primed.prompts


def _tripled(outcomes: Outcomes, informative: bool) -> tuple[Outcomes, np.ndarray, np.ndarray]:
    """The stream three times over, each copy with fresh vector noise (a longer stream of the same
    subjects: the challenger's test needs a few hundred labels)."""
    prior, vectors = _inputs(outcomes, informative)
    rng = np.random.default_rng(5)
    copies = [vectors] + [vectors + 0.05 * rng.standard_normal(vectors.shape) for _ in range(2)]
    tiled = np.concatenate(copies).astype(np.float32)
    tiled /= np.linalg.norm(tiled, axis=1, keepdims=True)
    longer = Outcomes(outcomes.name, outcomes.models, outcomes.records * 3, outcomes.contaminated_skipped)
    return longer, np.concatenate([prior] * 3), tiled


def test_domain_learning_switches_in_a_better_ranking(stream: Outcomes) -> None:
    """High-school maths is recorded with GPT-4 worse than Mixtral: labelled neighbours learn it, and
    the challenger's test switches the learned ranking in (frozen) once it has the evidence."""
    longer, prior, vectors = _tripled(stream, informative=False)
    base = OnlineOptions(mode="router", verify_share=0.2, seed=2, fallback=False, learn=True)
    learned = run_online(longer, prior, vectors, Pair(), DEFAULT_PRICES, base)
    fixed = run_online(
        longer, prior, vectors, Pair(), DEFAULT_PRICES, OnlineOptions(**{**_fields(base), "learn": False})
    )
    assert learned.switched_at and not fixed.switched_at
    assert learned.apgr_routed > fixed.apgr_routed + 0.1
    assert learned.total.retained >= 0.95
    assert any("switched in at prompt" in line for line in summary_lines(learned))
    assert report_json(learned)["switched_at"] == learned.switched_at


def test_domain_learning_leaves_a_right_prior_in_force(stream: Outcomes) -> None:
    longer, prior, vectors = _tripled(stream, informative=True)
    options = OnlineOptions(mode="router", verify_share=0.2, seed=2, fallback=False, learn=True)
    report = run_online(longer, prior, vectors, Pair(), DEFAULT_PRICES, options)
    assert report.switched_at == []
    assert any("never switched in" in line for line in summary_lines(report))


def _fields(options: OnlineOptions) -> dict[str, object]:
    return {name: getattr(options, name) for name in OnlineOptions.__dataclass_fields__}


def run_replay(args: list[str], env: dict[str, str] | None = None) -> Result:
    """`faregate replay ARGS` in process (the second command keeps typer's subcommand form)."""
    app = typer.Typer()
    replay_cli.register(app)
    app.command("noop")(lambda: None)
    return CliRunner().invoke(app, ["replay", *args], env=env)


def test_cli_online_flag(stream: Outcomes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prior, vectors = _inputs(stream, informative=True)

    def fake_prepare(spec: str, outcomes: Outcomes, **_: object) -> Prepared:
        assert spec == "router:some.json"
        return Prepared(stream, prior, vectors, Pair(), [], "router", "test stream", None)

    monkeypatch.setattr(replay_online, "prepare", fake_prepare)
    out = tmp_path / "online.json"
    result = run_replay(
        [
            *("--online", "--data", str(DATA / "mmlu"), "--policy", "router:some.json"),
            *("--verify-share", "0.2", "--json", str(out)),
        ],
        env={"COLUMNS": "220"},
    )
    assert result.exit_code == 0, result.output
    assert "APGR of the routed traffic" in result.output and "Online calibration" in result.output
    assert json.loads(out.read_text())["options"]["verify_share"] == 0.2


@pytest.mark.parametrize("window", ["0", "-5"])
def test_a_window_of_no_prompts_is_a_usage_error(window: str) -> None:
    # 0 divided the stream by zero (a traceback); a negative window printed windows that never fill.
    result = run_replay(
        [
            *("--online", "--data", str(DATA / "gsm8k_responses.csv")),
            *("--policy", "router:some.json", "--window", window),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--window'" in result.output


def test_data_without_prompts_is_a_usage_error(tmp_path: Path) -> None:
    # A header-only file (or one whose every prompt is contaminated) was an IndexError traceback.
    data = tmp_path / "empty.csv"
    data.write_text("prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1\n", encoding="utf-8")
    router = Path(__file__).parents[1] / "routers" / "router-gsm8k.json"
    result = run_replay(
        [
            *("--online", "--data", str(data), "--keep-contaminated"),
            *("--policy", f"router:{router}", "--cache-dir", str(tmp_path)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "empty.csv: no prompts to replay" in result.output


def test_models_priced_at_zero_report_no_cost_share(stream: Outcomes) -> None:
    # Self-hosted models priced 0/0 (--price): the plain replay prints "-" for the saving; the
    # online summary divided by the all-strong cost of $0 (decimal.InvalidOperation traceback).
    prior, vectors = _inputs(stream, informative=True)
    free = {model: Price(Decimal(0), Decimal(0)) for model in DEFAULT_PRICES}
    options = OnlineOptions(mode="router", verify_share=0.2, seed=0)
    report = run_online(stream, prior, vectors, Pair(), free, options)
    (line,) = [line for line in summary_lines(report) if line.startswith("cost ")]
    assert line.startswith("cost $0.00 (all-strong $0.00)")


def test_a_cascade_on_data_without_the_cheap_answers_is_a_usage_error(tmp_path: Path) -> None:
    # The judge reads the cheap model's recorded answer; MMLU-like data records correctness only.
    # This was a KeyError traceback; `replay --policy route:CASCADE` already said why in one line.
    data = tmp_path / "no_answers.csv"
    data.write_text(
        "prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1\nq1,True,False\nq2,True,True\n",
        encoding="utf-8",
    )
    judge = Path(__file__).parents[1] / "routers" / "judge-gsm8k.json"
    result = run_replay(
        [
            *("--online", "--data", str(data), "--keep-contaminated"),
            *("--policy", f"judge:{judge}", "--cache-dir", str(tmp_path)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "have no recorded answer from mistralai/Mixtral-8x7B-Instruct-v0.1" in result.output


def test_learn_with_a_judge_policy_is_a_usage_error(tmp_path: Path) -> None:
    # Domain learning corrects a router's ranking; a cascade's run ignored --learn without a word.
    data = tmp_path / "answers.csv"
    data.write_text(
        "prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1,"
        "mistralai/Mixtral-8x7B-Instruct-v0.1_response\nq1,True,False,4\n",
        encoding="utf-8",
    )
    judge = Path(__file__).parents[1] / "routers" / "judge-gsm8k.json"
    result = run_replay(
        [
            *("--online", "--learn", "--data", str(data), "--keep-contaminated"),
            *("--policy", f"judge:{judge}", "--cache-dir", str(tmp_path)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--learn applies to a router policy" in result.output
