"""`faregate eval --scorer llm-judge` end to end: the real eval command, a real gateway process and
the simulator as every model, the judge included.

The judge's replies are scripted per judge prompt: the simulator serves the judge model's answer
from a CSV keyed by the exact prompt the eval sends (the default rubric filled in, see
judge.judge_prompt), so each (item, model) gets a known reply — a labelled score, a JSON score,
or a reply with no score in it at all.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from faregate.cli.eval_plot import plot
from faregate.cli.eval_table import table, unscored_line
from faregate.cli.main import app
from faregate.evals.prompt_eval.judge import DEFAULT_RUBRIC, judge_prompt
from faregate.evals.prompt_eval.report import build_report
from faregate.evals.prompt_eval.run import Answer, EvalItem, RunOptions, pending
from faregate.store.analytics_rows import Slice
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.store import DB_FILENAME
from harness import GatewayProcess, SimProcess, create_key, run_gateway, run_sim

pytestmark = pytest.mark.e2e

ECHO = "deepseek-v4-flash"  # the simulator's default: echoes the question back
FIXED = "gpt-4o"  # scripted to give one fixed (wrong) answer to everything
JUDGE = "gpt-4o-mini"
FIXED_TEXT = "I do not know."
UNREADABLE = "I cannot grade this answer."  # the judge's reply to anything not in its CSV

ITEMS = [
    ("q0", "What is 2+2?", "4"),
    ("q1", "Name the capital of France.", "Paris"),
    ("q2", "What colour is the sky on a clear day?", "blue"),
    ("q3", "Spell 'cat' backwards.", "tac"),
]
# Judge replies for the echoing model, per item; q3 has none, so the judge says UNREADABLE.
ECHO_REPLIES = {"q0": "It restates the question.\nScore: 8/10", "q1": '{"score": 4}', "q2": "Score: 9/10"}
ECHO_SCORES = [0.8, 0.4, 0.9, None]
FIXED_REPLIES = {"q0": "Score: 3/10", "q1": "Score: 3/10", "q2": "Score: 5/10", "q3": "Score: 1/10"}
FIXED_SCORES = [0.3, 0.3, 0.5, 0.1]


def _judge_csv(path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "reply"])
        for item_id, prompt, expected in ITEMS:
            # The echoing model's answer is the question itself; the other's is always FIXED_TEXT.
            if item_id in ECHO_REPLIES:
                writer.writerow(
                    [judge_prompt(DEFAULT_RUBRIC, prompt, expected, prompt), ECHO_REPLIES[item_id]]
                )
            fixed = judge_prompt(DEFAULT_RUBRIC, prompt, expected, FIXED_TEXT)
            writer.writerow([fixed, FIXED_REPLIES[item_id]])


# No faults anywhere: every request gets its scripted answer, so every figure is known.
SCRIPT = f"""
defaults: {{ttft_ms: 0, faults: {{}}}}
models:
  {FIXED}:
    answer: {{fixed: {FIXED_TEXT!r}}}
  {JUDGE}:
    answer: {{replay: {{csv: judge.csv, column: reply, prompt_column: prompt, fallback: {UNREADABLE!r}}}}}
"""


@pytest.fixture(scope="module")
def judged_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    workdir = tmp_path_factory.mktemp("judge-sim")
    _judge_csv(workdir / "judge.csv")
    with run_sim(workdir, SCRIPT) as process:
        yield process


@pytest.fixture(scope="module")
def judged_gateway(
    judged_sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    # The exact cache stays on (the default): judge calls are temperature 0, so they are cached.
    with run_gateway(tmp_path_factory.mktemp("judge-gateway"), judged_sim) as process:
        yield process


def _sim_models(sim: SimProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=5) as response:
        return dict(json.loads(response.read())["models"])


def _recorded_cost(gateway: GatewayProcess, model: str, requests: int) -> Decimal:
    """What the gateway itself recorded for `model` (its request records, flushed in the background)."""

    async def read() -> tuple[int, Decimal]:
        analytics = await SQLiteAnalytics.open(Path(gateway.store_path) / DB_FILENAME)
        try:
            rows = await analytics.breakdown(Slice(0.0, time.time() + 3600), "model")
        finally:
            await analytics.close()
        row = next((r for r in rows if r.group == model), None)
        return (0, Decimal(0)) if row is None else (row.totals.requests, row.totals.cost)

    deadline = time.monotonic() + 10
    while True:
        seen, cost = asyncio.run(read())
        if seen >= requests or time.monotonic() > deadline:
            assert seen == requests, f"{model}: {seen} records, expected {requests}"
            return cost
        time.sleep(0.05)


def _eval(prompts: Path, out: Path, gateway: GatewayProcess, api_key: str) -> str:
    args = [
        *("eval", str(prompts), "--out", str(out), "--base-url", gateway.base_url, "--api-key", api_key),
        *("--model", ECHO, "--model", FIXED, "--scorer", "llm-judge", "--judge-model", JUDGE),
        *("--monthly-requests", "1000"),
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def _answers(out: Path) -> dict[tuple[str, str], dict[str, object]]:
    # The last line per pair is the current one (a re-judge appends a new line).
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    return {(str(a["item_id"]), str(a["model"])): a for a in lines}


def _judge_total(answers: dict[tuple[str, str], dict[str, object]], model: str | None = None) -> Decimal:
    return sum(
        (Decimal(str(a["judge_cost_usd"])) for (_, m), a in answers.items() if model in (None, m)),
        Decimal(0),
    )


def test_llm_judge_end_to_end(judged_gateway: GatewayProcess, judged_sim: SimProcess, tmp_path: Path) -> None:
    api_key = create_key(judged_gateway.store_path, "judge-e2e")
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p, "expected": e}) + "\n" for i, p, e in ITEMS))

    before = _sim_models(judged_sim)
    output = _eval(prompts, out, judged_gateway, api_key)
    after = _sim_models(judged_sim)
    # 4 items x 2 models answered, and each answer judged once.
    assert after.get(JUDGE, 0) - before.get(JUDGE, 0) == 8

    answers = _answers(out)
    assert [answers[(i, ECHO)]["judge_score"] for i, _, _ in ITEMS] == ECHO_SCORES
    assert [answers[(i, FIXED)]["judge_score"] for i, _, _ in ITEMS] == FIXED_SCORES
    assert answers[("q3", ECHO)]["judge_reply"] == UNREADABLE
    assert all(a["judge_calls"] == 1 and Decimal(str(a["judge_cost_usd"])) > 0 for a in answers.values())

    # Quality is the mean judge score with a t interval; the unreadable reply is left out, not a 0.
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["model"]: row for row in summary["models"]}
    scored = [s for s in ECHO_SCORES if s is not None]
    low, high = scipy_stats.t.interval(0.95, len(scored) - 1, loc=0.7, scale=scipy_stats.sem(scored))
    high = min(high, 1.0)  # three scores spread wide: the t interval passes 1, the score's ceiling
    echo_quality = rows[ECHO]["quality"]
    assert echo_quality["estimate"] == pytest.approx(0.7)
    assert (echo_quality["low"], echo_quality["high"]) == (pytest.approx(low), pytest.approx(high))
    assert rows[FIXED]["quality"]["estimate"] == pytest.approx(0.3)
    assert (rows[ECHO]["unscored"], rows[FIXED]["unscored"]) == (1, 0)
    assert (rows[ECHO]["answered"], rows[ECHO]["errors"]) == (4, 0)
    assert f"0.700 [{low:.3f}, {high:.3f}]" in output and "0.300 [" in output
    # Paired over the 3 items both models have a score for.
    (comparison,) = summary["comparisons"]
    assert comparison["n"] == 3
    assert comparison["difference"]["estimate"] == pytest.approx((0.5 + 0.1 + 0.4) / 3)

    # The cost of judging: summed apart from the models' own cost, and equal to what the gateway
    # recorded for the judge model; the models' cost is what the gateway recorded for them.
    judging = _judge_total(answers)
    assert Decimal(summary["judging"]["judge_total_cost_usd"]) == judging
    assert summary["judging"]["judge_calls"] == 8
    assert Decimal(summary["judging"]["judge_cost_per_1k_requests_usd"]) == judging * 1000 / 8
    assert judging == _recorded_cost(judged_gateway, JUDGE, 8)
    for model in (ECHO, FIXED):
        own = sum((Decimal(str(a["cost_usd"])) for (_, m), a in answers.items() if m == model), Decimal(0))
        assert Decimal(rows[model]["total_cost_usd"]) == own
        assert Decimal(rows[model]["cost_per_1k_requests_usd"]) == own * 1000 / 4
        assert Decimal(rows[model]["judge_total_cost_usd"]) == _judge_total(answers, model)
        assert rows[model]["judge_calls"] == 4
    assert "cost of judging:" in output and "over 8 judge calls" in output
    assert "judging / 1k req" in output and "unscored" in output
    assert "1 answer has no readable judge score" in output

    with (out / "results.csv").open() as handle:
        results = {(r["item_id"], r["model"]): r for r in csv.DictReader(handle)}
    assert [results[(i, ECHO)]["score"] for i, _, _ in ITEMS] == ["0.8", "0.4", "0.9", ""]
    assert [float(results[(i, FIXED)]["score"]) for i, _, _ in ITEMS] == FIXED_SCORES
    assert results[("q3", ECHO)]["judge_reply"] == UNREADABLE
    assert results[("q1", ECHO)]["judge_reply"] == '{"score": 4}'
    assert Decimal(results[("q0", FIXED)]["judge_cost_usd"]) > 0

    # A re-run judges only the unscored answer again, and asks the judge itself (not the gateway's
    # cache, which holds the same deterministic request): the models are not asked again.
    again = _eval(prompts, out, judged_gateway, api_key)
    assert "resuming: 7 answers already" in again and "1 to go" in again
    final = _sim_models(judged_sim)
    assert final.get(JUDGE, 0) - after.get(JUDGE, 0) == 1
    assert (final.get(ECHO, 0), final.get(FIXED, 0)) == (after.get(ECHO, 0), after.get(FIXED, 0))
    rejudged = _answers(out)[("q3", ECHO)]
    assert rejudged["judge_calls"] == 2 and rejudged["judge_score"] is None
    # Both judge calls were paid for (the same prompt and reply, so the same cost twice).
    first_cost = Decimal(str(answers[("q3", ECHO)]["judge_cost_usd"]))
    assert Decimal(str(rejudged["judge_cost_usd"])) == 2 * first_cost
    assert _judge_total(_answers(out)) == _recorded_cost(judged_gateway, JUDGE, 9)
    assert "over 9 judge calls" in again


def _answer(judge_score: float | None, judged_by: str | None) -> Answer:
    return Answer("q", "m", text="t", judge_score=judge_score, judged_by=judged_by)


def test_a_score_from_another_judge_or_rubric_is_not_reused() -> None:
    item = EvalItem("q", [{"role": "user", "content": "hi"}])
    judge_a = RunOptions(judge_model="a", rubric=DEFAULT_RUBRIC).judge_id
    judge_b = RunOptions(judge_model="b", rubric=DEFAULT_RUBRIC).judge_id
    other_rubric = RunOptions(judge_model="a", rubric="Rate {answer}.").judge_id
    assert len({judge_a, judge_b, other_rubric}) == 3

    def todo(answer: Answer, judge_id: str | None) -> int:
        return len(pending([item], ["m"], {("q", "m"): answer}, judge_id))

    assert todo(_answer(0.5, judge_a), judge_a) == 0
    assert todo(_answer(0.5, judge_a), judge_b) == 1
    assert todo(_answer(0.5, judge_a), other_rubric) == 1
    assert todo(_answer(None, judge_a), judge_a) == 1  # no readable score: judged again
    assert todo(_answer(None, None), None) == 0  # no judge: the answer is all that is needed


def test_a_model_the_judge_never_scored_is_reported_not_zeroed(tmp_path: Path) -> None:
    items = [EvalItem(f"q{i}", [{"role": "user", "content": f"question {i}"}]) for i in range(3)]
    answers = {
        (item.id, model): Answer(item.id, model, text="a", judge_score=score, judged_by="j", judge_calls=1)
        for item in items
        for model, score in (("scored", 0.5), ("unscored", None))
    }
    report = build_report(items, ["scored", "unscored"], answers, "llm-judge", 1000)
    unscored = report.summaries[1]
    assert unscored.unscored == 3 and unscored.quality.estimate != unscored.quality.estimate  # NaN
    assert report.comparisons[0].n == 0  # nothing to pair: no verdict either way
    console = Console(width=250, record=True)
    console.print(table(report))
    assert "n/a (no scores)" in console.export_text()
    warning = unscored_line(report)
    assert warning is not None and warning.startswith("3 answers have no readable judge score")
    plot(report, tmp_path)  # the chart leaves out a model with no quality to place
    assert (tmp_path / "cost_quality.png").exists()
