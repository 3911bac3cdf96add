"""`faregate replay --policy route:NAME | router:FILE`: configured routes replayed on recorded outcomes.

Plain routes run through the gateway's own Planner; router and cascade routes use the trained files
committed in routers/ on a handful of real GSM8K questions (the router with a hashed bag-of-words
embedder instead of MiniLM, except in the one command-line run of router:FILE).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from faregate import usage_estimate
from faregate.cli import replay as replay_cli
from faregate.config import load_settings
from faregate.evals.replay.engine import Pair, Report
from faregate.evals.replay.outcomes import (
    STRONG_MODEL,
    WEAK_MODEL,
    Outcomes,
    PromptRecord,
    load_outcomes,
    prompt_tokens,
)
from faregate.evals.replay.routes import RouteReplay, evaluate_route, open_route
from faregate.learning.cascade_judges import (
    LearnedJudge,
    RuleJudge,
    check_empty,
    check_final_number,
    check_refusal,
)
from faregate.learning.complexity_router import ComplexityRouter
from faregate.types import Price, Usage
from test_complexity_router import HashEmbedder

ROOT = Path(__file__).resolve().parents[1]
ROUTER = ROOT / "routers" / "router-gsm8k.json"
JUDGE = ROOT / "routers" / "judge-gsm8k.json"
GSM8K = ROOT / "data" / "routellm" / "gsm8k_responses.csv"

PAIR = Pair(strong="big", weak="small")
PRICES = {"big": Price(Decimal("10.00"), Decimal("30.00")), "small": Price(Decimal("0.60"), Decimal("0.60"))}
# Per call on the tiny records below: big 1,000 in x $10 + 500 out x $30 per 1M = $0.025;
# small 1,000 in + 1,000 out at $0.60 = $0.0012.
BIG_CALL, SMALL_CALL = Decimal("0.025"), Decimal("0.0012")
#   k:     1  2  3  4  5  6  7  8  9  10
BIG = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
SMALL = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0]

# The catalog names differ from the recorded ones: `big` is an alias of big-v1, `small` is a model.
# Config prices are deliberately absurd: replay prices with its own (--price), never the config's.
MODELS = """
catalog: {broad: false}
models:
  big-v1: {input: 999, output: 999, aliases: [big]}
  small: {input: 999, output: 999}
  other: {input: 1, output: 1}
"""


def apples(k: int) -> str:
    """k words: the prompt is k + 6 tokens as a chat request (3 per message, 3 for the reply)."""
    return " ".join(["apple"] * k)


def tiny_outcomes() -> Outcomes:
    records = [
        PromptRecord(
            prompt=apples(k),
            source="tiny",
            correct={"big": bool(BIG[k - 1]), "small": bool(SMALL[k - 1])},
            input_tokens=1_000,
            output_tokens={"big": 500, "small": 1_000},
        )
        for k in range(1, 11)
    ]
    return Outcomes("tiny", ("small", "big"), records)


def write_config(tmp_path: Path, routes: str, models: str = MODELS) -> Path:
    path = tmp_path / "faregate.yaml"
    path.write_text(models + "routes:\n" + routes, encoding="utf-8")
    return path


@pytest.fixture
def opened() -> Iterator[list[RouteReplay]]:
    """Routes opened by a test, closed after it (their policies own a worker thread)."""
    routes: list[RouteReplay] = []
    yield routes
    for route in routes:
        route.close()


def replay_route(
    opened: list[RouteReplay],
    config: Path,
    name: str,
    outcomes: Outcomes,
    *,
    aliases: dict[str, str] | None = None,
    hints: dict[str, str] | None = None,
) -> Report:
    route = open_route(load_settings(config), name, outcomes.models, aliases)
    opened.append(route)
    return evaluate_route(route, outcomes, PAIR, PRICES, hints=hints)


# -- plain routes ---------------------------------------------------------------------------------------


def test_rule_route_with_a_prompt_token_threshold(tmp_path: Path, opened: list[RouteReplay]) -> None:
    assert [prompt_tokens(apples(k)) for k in (1, 4, 5, 10)] == [7, 10, 11, 16]
    config = write_config(
        tmp_path,
        "  short-first:\n    rules: [{when: {max_prompt_tokens: 10}, use: [small]}]\n    chain: [big-v1]\n",
    )
    report = replay_route(opened, config, "short-first", tiny_outcomes())
    policy = report.policy
    assert policy is not None and policy.name == "route short-first"
    # k = 1..4 are 7..10 tokens: small; k = 5..10 go to the chain, big.
    # Right: small on k 1..4 = 1+0+0+1 = 2; big on k 5..10 = 0+1+1+1+0+1 = 4; 6 of 10.
    assert policy.shares == {"big": 0.6, "small": 0.4}
    assert policy.accuracy == pytest.approx(0.6)
    # 6 x $0.025 + 4 x $0.0012 = $0.1548, at the replay's prices (not the config's $999).
    assert policy.cost == 6 * BIG_CALL + 4 * SMALL_CALL == Decimal("0.1548")


def test_chain_routes_are_the_all_strong_and_all_weak_rows(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(tmp_path, "  strong: {chain: [big, small]}\n  weak: {chain: [small, big-v1]}\n")
    outcomes = tiny_outcomes()
    for name, baseline in (("strong", "all-strong"), ("weak", "all-weak")):
        report = replay_route(opened, config, name, outcomes)
        row = next(b for b in report.baselines if b.name == baseline)
        assert report.policy is not None
        assert (report.policy.shares, report.policy.accuracy, report.policy.cost) == (
            row.shares,
            row.accuracy,
            row.cost,
        )
    assert row.cost == 10 * SMALL_CALL


def test_tier_routes_follow_the_hints(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(
        tmp_path, "  tiered:\n    tiers: {economy: [small], premium: [big]}\n    default_tier: economy\n"
    )
    outcomes = tiny_outcomes()
    economy = replay_route(opened, config, "tiered", outcomes)
    assert economy.policy is not None and economy.policy.shares == {"big": 0.0, "small": 1.0}
    premium = replay_route(opened, config, "tiered", outcomes, hints={"tier": "premium"})
    assert premium.policy is not None and premium.policy.shares == {"big": 1.0, "small": 0.0}


def test_unmapped_and_explicitly_mapped_models(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(tmp_path, "  elsewhere: {chain: [other]}\n")
    outcomes = tiny_outcomes()
    with pytest.raises(
        ValueError, match=r"chose 'other', which maps to no recorded model .*small, big.*--as other="
    ):
        replay_route(opened, config, "elsewhere", outcomes)
    mapped = replay_route(opened, config, "elsewhere", outcomes, aliases={"other": "small"})
    assert mapped.policy is not None and mapped.policy.shares["small"] == 1.0
    with pytest.raises(ValueError, match="records no 'tiny-model'"):
        open_route(load_settings(config), "elsewhere", outcomes.models, {"other": "tiny-model"})
    with pytest.raises(ValueError, match=r"no route 'nope' in the config \(its routes: elsewhere"):
        open_route(load_settings(config), "nope", outcomes.models)


# -- cascade routes -------------------------------------------------------------------------------------


def cascade_outcomes() -> Outcomes:
    """Four prompts and the cheap model's recorded answers; tokens round, as above."""
    answers = ["3 * 4 = 12 apples.\n#### 12", "I'm sorry, but I can't help with that.", "", "About a dozen."]
    correct_small, correct_big = [True, False, False, True], [True, True, False, True]
    records = [
        PromptRecord(
            prompt=f"Question {i}: how many apples?",
            source="cascade",
            correct={"big": correct_big[i], "small": correct_small[i]},
            input_tokens=1_000,
            output_tokens={"big": 500, "small": 1_000},
            responses={"small": answers[i], "big": "#### 12"},
        )
        for i in range(4)
    ]
    return Outcomes("cascade", ("small", "big"), records)


def test_a_cascade_pays_both_calls_when_it_escalates(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(
        tmp_path,
        "  cheap-first:\n    cascade:\n      steps: [small, big]\n"
        "      judge: {checks: [empty, refusal, final_number]}\n",
    )
    report = replay_route(opened, config, "cheap-first", cascade_outcomes())
    policy = report.policy
    assert policy is not None and policy.name == "route cheap-first (cascade: rules only)"
    # Accepted: 0 ("#### 12"). Escalated: 1 (refusal), 2 (empty), 3 (no final number).
    # Strong share = escalations, 3 of 4. Right: small on 0 (yes); big on 1, 2, 3 (yes, no, yes): 3 of 4.
    assert policy.shares == {"big": 0.75, "small": 0.25}
    assert policy.accuracy == pytest.approx(0.75)
    # Every prompt pays the cheap call; each escalated one the strong call on top:
    # 4 x $0.0012 + 3 x $0.025 = $0.0798 (a router sending the same 3 to big would pay $0.0762).
    assert policy.cost == 4 * SMALL_CALL + 3 * BIG_CALL == Decimal("0.0798")
    assert report.sweep is None  # rules only: one operating point, no threshold to sweep


def test_an_llm_judge_cannot_be_replayed(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(
        tmp_path,
        "  graded:\n    cascade:\n      steps: [small, big]\n      judge: {llm: {model: other}}\n",
    )
    with pytest.raises(ValueError, match=r"LLM judge \(other\).*replay calls no model"):
        replay_route(opened, config, "graded", cascade_outcomes())


def test_a_cascade_needs_the_cheap_answers(tmp_path: Path, opened: list[RouteReplay]) -> None:
    config = write_config(tmp_path, "  cheap-first:\n    cascade: {steps: [small, big]}\n")
    # Correctness only, as in the MMLU files.
    with pytest.raises(ValueError, match=r"no recorded answer from small \(no 'small_response' column\)"):
        replay_route(opened, config, "cheap-first", tiny_outcomes())


@pytest.fixture(scope="module")
def gsm8k_handful(tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    """The first eight GSM8K questions, with both models' recorded answers."""
    with GSM8K.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [next(reader) for _ in range(8)]
        columns = reader.fieldnames
    assert columns is not None
    path = tmp_path_factory.mktemp("gsm8k") / "gsm8k_handful.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return load_outcomes(path, drop_contaminated=False)


GSM8K_MODELS = """
catalog: {broad: false}
models:
  gpt-4-1106-preview: {input: 10, output: 30}
  mixtral-8x7b-instruct-v0.1: {input: 0.6, output: 0.6, aliases: ["mistralai/Mixtral-8x7B-Instruct-v0.1"]}
"""
GSM8K_PRICES = {
    STRONG_MODEL: Price(Decimal(10), Decimal(30)),
    WEAK_MODEL: Price(Decimal("0.6"), Decimal("0.6")),
}


def cost_of(record: PromptRecord, model: str) -> Decimal:
    return GSM8K_PRICES[model].cost(Usage(record.input_tokens, record.output_tokens[model]))


def test_learned_judge_cascade_on_real_answers(
    tmp_path: Path, opened: list[RouteReplay], gsm8k_handful: Outcomes
) -> None:
    records = gsm8k_handful.records
    probe = LearnedJudge.load(JUDGE, threshold=0.5)
    scores = [probe.score(r.prompt, r.responses[WEAK_MODEL]) for r in records]
    probe.close()
    # Two of the eight recorded Mixtral answers are cut off before a final number: the rules refuse
    # them. Of the six others, a threshold between the 2nd and 3rd highest P(wrong) escalates two.
    rules = RuleJudge([check_empty, check_refusal, check_final_number])
    refused = [not rules.verdict({}, r.responses[WEAK_MODEL], None).accepted for r in records]
    assert sum(refused) == 2
    passed = sorted((s for s, no in zip(scores, refused, strict=True) if not no), reverse=True)
    threshold = (passed[1] + passed[2]) / 2
    config = write_config(
        tmp_path,
        "  math-cascade:\n    cascade:\n      steps: [mixtral-8x7b-instruct-v0.1, gpt-4-1106-preview]\n"
        "      judge:\n        checks: [empty, refusal, final_number]\n"
        f"        learned: {{file: {JUDGE}, threshold: {threshold}}}\n",
        GSM8K_MODELS,
    )
    route = open_route(load_settings(config), "math-cascade", gsm8k_handful.models)
    opened.append(route)
    report = evaluate_route(route, gsm8k_handful, Pair(), GSM8K_PRICES)
    escalated = [no or s >= threshold for s, no in zip(scores, refused, strict=True)]
    assert sum(escalated) == 4
    policy = report.policy
    assert policy is not None and policy.share(STRONG_MODEL) == 4 / 8
    expected = sum(
        (r.correct[STRONG_MODEL] if up else r.correct[WEAK_MODEL])
        for r, up in zip(records, escalated, strict=True)
    )
    assert policy.accuracy == expected / 8
    cost = sum((cost_of(r, WEAK_MODEL) for r in records), Decimal(0))
    cost += sum(
        (cost_of(r, STRONG_MODEL) for r, up in zip(records, escalated, strict=True) if up), Decimal(0)
    )
    assert policy.cost == cost
    # The sweep prices each point as a cascade too: at 100% escalation, both calls on every prompt.
    assert report.sweep is not None and len(report.sweep.points) == 11
    assert report.sweep.points[-1].cost == sum(
        (cost_of(r, WEAK_MODEL) + cost_of(r, STRONG_MODEL) for r in records), Decimal(0)
    )


# -- router routes --------------------------------------------------------------------------------------


def test_router_route_sweeps_and_keeps_its_own_threshold(
    tmp_path: Path, opened: list[RouteReplay], gsm8k_handful: Outcomes
) -> None:
    records = gsm8k_handful.records
    probe = ComplexityRouter.load(ROUTER, embedder=HashEmbedder())
    scores = probe.score_many([r.prompt for r in records])
    probe.close()
    ranked = np.sort(scores)[::-1]
    threshold = float((ranked[2] + ranked[3]) / 2)  # the three highest scores go strong
    config = write_config(
        tmp_path, f"  math-router:\n    router: {{file: {ROUTER}, threshold: {threshold}}}\n", GSM8K_MODELS
    )
    route = open_route(load_settings(config), "math-router", gsm8k_handful.models)
    opened.append(route)
    report = evaluate_route(
        route, gsm8k_handful, Pair(), GSM8K_PRICES, cache_dir=tmp_path / "vectors", embedder=HashEmbedder()
    )
    assert report.pair == Pair(STRONG_MODEL, WEAK_MODEL)  # the route's steps, mapped through aliases
    strong = scores >= threshold
    policy = report.policy
    assert policy is not None and policy.name == f"route math-router (score ≥ {threshold:g})"
    assert policy.share(STRONG_MODEL) == 3 / 8
    assert policy.cost == sum(
        (cost_of(r, STRONG_MODEL if up else WEAK_MODEL) for r, up in zip(records, strong, strict=True)),
        Decimal(0),
    )
    # The router's scores, swept the RouteLLM way, with its APGR.
    assert report.sweep is not None and len(report.sweep.points) == 11
    assert 0.0 <= report.sweep.metrics.apgr <= 2.0


# -- the command ----------------------------------------------------------------------------------------


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py will build it."""

    replay_cli.register(app)
    return app


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def write_tiny_csv(tmp_path: Path) -> Path:
    path = tmp_path / "apples.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "small", "big"])
        for k in range(1, 11):
            writer.writerow([apples(k), bool(SMALL[k - 1]), bool(BIG[k - 1])])
    return path


def test_command_replays_a_configured_route(app: typer.Typer, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "  short-first:\n    rules: [{when: {max_prompt_tokens: 10}, use: [small]}]\n    chain: [big-v1]\n"
        "  elsewhere: {chain: [other]}\n"
        "  graded:\n    cascade:\n      steps: [small, big]\n      judge: {llm: {model: other}}\n",
    )
    common = ["replay", "--data", str(write_tiny_csv(tmp_path)), "--keep-contaminated", "-c", str(config),
              "--strong", "big", "--weak", "small", "--price", "big=10/30",
              "--price", "small=0.60/0.60"]  # fmt: skip
    report = tmp_path / "report.json"
    result = run(app, *common, "--policy", "route:short-first", "--json", str(report))
    assert result.exit_code == 0, result.output
    assert "Policies on apples.csv: 10 prompts" in result.output
    row = next(line for line in result.output.splitlines() if "route short-first" in line)
    assert "60.0%" in row  # 6 of 10 calls on big
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["policy"]["shares"] == {"small": 0.4, "big": 0.6}
    assert data["policy"]["accuracy"] == pytest.approx(0.6)

    for policy, message in (
        ("route:nope", "no route 'nope' in the config"),
        ("route:elsewhere", "chose 'other', which maps to no recorded model"),
        ("route:graded", "LLM judge"),
    ):
        failed = run(app, *common, "--policy", policy)
        assert failed.exit_code == 2, failed.output
        assert message in failed.output
        assert "Traceback" not in failed.output
    held = run(app, *common, "--policy", "route:short-first", "--held-out")
    assert held.exit_code == 2 and "uses no trained file" in held.output


def test_command_counts_prompts_as_the_config_says(app: typer.Typer, tmp_path: Path) -> None:
    # A rule's prompt tokens are counted as the gateway with this config counts them
    # (accounts.usage_estimate): this question is 31 tokens by the light count, 30 by o200k.
    question = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    )
    data = tmp_path / "natalia.csv"
    data.write_text(f"prompt,small,big\n{question!r},True,False\n".replace("'", '"'), encoding="utf-8")
    route = (
        "  short-first:\n    rules: [{when: {max_prompt_tokens: 30}, use: [small]}]\n    chain: [big-v1]\n"
    )
    common = ["replay", "--data", str(data), "--keep-contaminated", "--strong", "big", "--weak", "small",
              "--price", "big=10/30", "--price", "small=0.60/0.60"]  # fmt: skip
    common += ["--policy", "route:short-first"]
    shares: dict[str, dict[str, float]] = {}
    try:
        for estimate in ("light", "tokenizer"):
            folder = tmp_path / estimate
            folder.mkdir()
            config = write_config(folder, route, MODELS + f"accounts: {{usage_estimate: {estimate}}}\n")
            report = folder / "report.json"
            result = run(app, *common, "-c", str(config), "--json", str(report))
            assert result.exit_code == 0, result.output
            shares[estimate] = json.loads(report.read_text(encoding="utf-8"))["policy"]["shares"]
    finally:
        usage_estimate.configure("light")
    assert shares["light"]["big"] == 1.0
    assert shares["tokenizer"]["small"] == 1.0


def test_command_replays_a_trained_router_file(
    app: typer.Typer, tmp_path: Path, gsm8k_handful: Outcomes
) -> None:
    # The real MiniLM on eight questions, vectors cached under tmp_path.
    data = tmp_path / "handful.csv"
    with data.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", WEAK_MODEL, STRONG_MODEL])
        writer.writerows(
            [r.prompt, r.correct[WEAK_MODEL], r.correct[STRONG_MODEL]] for r in gsm8k_handful.records
        )
    result = run(app, "replay", "--data", str(data), "--keep-contaminated", "--policy", f"router:{ROUTER}",
                 "--cache-dir", str(tmp_path / "vectors"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "router router-gsm8k.json: threshold sweep" in result.output
    assert "APGR" in result.output
    wrong = run(app, "replay", "--data", str(data), "--keep-contaminated", "--policy", f"router:{JUDGE}")
    assert wrong.exit_code == 2 and "not a 'complexity-router'" in wrong.output
