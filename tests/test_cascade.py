"""Cascade judges: rule checks, the learned judge's training and file, the LLM judge's score parser."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faregate.evals.replay.engine import Pair
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, load_outcomes
from faregate.evals.replay.router_eval import evaluate
from faregate.learning.cascade_judges import (
    MATH_CHECKS,
    AllOf,
    LearnedJudge,
    RuleJudge,
    check_final_number,
    required_pattern,
)
from faregate.learning.llm_judge import LLMJudge, parse_judge_score
from faregate.learning.text_features import ANSWER_NAMES, answer_features, final_number, safe_eval
from faregate.learning.training.fit import train_judge
from faregate.learning.training.selection import Grid, SplitSpec, split_outcomes
from test_complexity_router import HashEmbedder

SMALL_GRID = Grid(l2=(10.0, 300.0), embedding_penalty=(100.0,))
QUESTION = {"messages": [{"role": "user", "content": "Tom has 3 bags of 4 apples. How many apples?"}]}
JSON_REQUEST = {**QUESTION, "response_format": {"type": "json_object"}}


def verdict(
    judge: RuleJudge, answer: str, finish: str | None = "stop", body: Any = QUESTION
) -> tuple[bool, str]:
    return judge.verdict(body, answer, finish)


# -- rules ----------------------------------------------------------------------------------------------


def test_rule_checks_on_known_cases() -> None:
    rules = RuleJudge()
    assert verdict(rules, "3 * 4 = 12 apples.") == (True, "passed rule checks")
    assert verdict(rules, "") == (False, "empty answer")
    assert verdict(rules, "   \n ") == (False, "empty answer")
    assert verdict(rules, "I'm sorry, but I can't help with that.") == (False, "refusal")
    assert verdict(rules, "As an AI language model, I cannot count apples.")[0] is False
    # "I can't" deep inside a worked answer is not a refusal.
    assert verdict(rules, "We have 12 apples. I can't see any more, so 12.")[0] is True
    assert verdict(rules, "3 * 4 = 1", finish="length") == (
        False,
        "cut off at max_tokens (finish_reason=length)",
    )


def test_json_is_checked_only_when_asked() -> None:
    rules = RuleJudge()
    assert verdict(rules, '{"apples": 12}', body=JSON_REQUEST)[0] is True
    assert verdict(rules, '```json\n{"apples": 12}\n```', body=JSON_REQUEST)[0] is True
    assert verdict(rules, "apples: 12", body=JSON_REQUEST) == (
        False,
        "invalid JSON although response_format asked for JSON",
    )
    schema = {**QUESTION, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert verdict(rules, '{"apples": 12', body=schema)[0] is False
    assert verdict(rules, "apples: 12")[0] is True  # no JSON asked: not checked


def test_required_formats() -> None:
    math = RuleJudge(MATH_CHECKS)
    assert verdict(math, "3 * 4 = <<3*4=12>>12\n#### 12")[0] is True
    assert verdict(math, "So the answer is 12.")[0] is True
    assert verdict(math, "The final answer is: $1,200.50")[0] is True
    assert verdict(math, "3 * 4 = <<3*4=1") == (False, "no final numeric answer")
    assert check_final_number({}, "There are twelve apples.", None) == "no final numeric answer"
    assert final_number("#### 1,234") == 1234.0 and final_number("The answer is -3.5") == -3.5
    letter = RuleJudge([required_pattern(r"^Answer: [A-D]$", "an answer letter")])
    assert verdict(letter, "Reasoning...\nAnswer: C")[0] is True
    assert verdict(letter, "Reasoning...\nAnswer: maybe C") == (False, "missing an answer letter")


async def test_all_of_stops_at_the_first_refusal() -> None:
    calls: list[str] = []

    class Recording:
        def __init__(self, name: str, ok: bool) -> None:
            self.name, self.ok = name, ok

        async def accept(self, body: Any, answer: str, finish: str | None) -> tuple[bool, str]:
            calls.append(self.name)
            return self.ok, self.name

    judge = AllOf(RuleJudge(), Recording("a", True), Recording("b", False), Recording("c", True))
    assert await judge.accept(QUESTION, "12", "stop") == (False, "b")
    assert calls == ["a", "b"]
    assert (await AllOf(RuleJudge()).accept(QUESTION, "", "stop"))[0] is False


def test_answer_features_check_the_arithmetic() -> None:
    names = {n: i for i, n in enumerate(ANSWER_NAMES)}
    question = "Tom has 3 bags of 4 apples. How many apples?"
    good = answer_features(question, "3 * 4 = <<3*4=12>>12 apples.\n#### 12")
    bad = answer_features(question, "3 * 4 = <<3*4=13>>13 apples.\n#### 13.5")
    assert good[names["calc_wrong_share"]] == 0.0 and bad[names["calc_wrong_share"]] == 1.0
    assert good[names["final_integer"]] == 1.0 and bad[names["final_integer"]] == 0.0
    assert good[names["question_numbers_used"]] == 1.0
    cut = answer_features(question, "3 * 4 = <<3*4=1", "length")
    assert cut[names["unclosed_calc"]] == 1.0 and cut[names["truncated"]] == 1.0
    # Rounded intermediate values are not errors; only + - * / over numbers is ever evaluated.
    assert answer_features(question, "<<250/3=83.33>>")[names["calc_wrong_share"]] == 0.0
    assert safe_eval("2*(3+4)/7") == 2.0
    assert safe_eval("__import__('os')") is None and safe_eval("9**9**9") is None and safe_eval("1/0") is None


def test_answer_features_of_a_final_number_too_big_for_a_float() -> None:
    # 309 digits or more is past the largest float: float() gives inf, and int(inf) raised.
    names = {n: i for i, n in enumerate(ANSWER_NAMES)}
    huge = "9" * 400
    features = answer_features(f"Is it {huge}?", f"It is {huge}.\n#### -{huge}")
    assert np.all(np.isfinite(features))
    assert features[names["has_final"]] == 1.0 and features[names["final_integer"]] == 1.0
    assert features[names["final_negative"]] == 1.0 and features[names["final_in_question"]] == 1.0
    # The largest float's logarithm: above every float-sized final, and bounded.
    assert 308.0 < features[names["log_final"]] < 309.0


# -- learned judge --------------------------------------------------------------------------------------


def write_answers(path: Path, n: int = 160, seed: int = 2) -> Path:
    """GSM8K-like rows: the cheap model's answer is right when it is finished and its arithmetic holds."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["prompt", WEAK_MODEL, STRONG_MODEL, f"{WEAK_MODEL}_response", f"{STRONG_MODEL}_response"]
        )
        for i in range(n):
            a, b = int(rng.integers(2, 30)), int(rng.integers(2, 30))
            question = f"Item {i}: a shop packs {a} boxes with {b} pens each. How many pens are there?"
            right = rng.random() < 0.6
            if right:
                answer = f"{a} * {b} = <<{a}*{b}={a * b}>>{a * b} pens.\n#### {a * b}"
            else:
                kind = i % 3
                answer = [
                    f"{a} * {b} = <<{a}*{b}={a * b + 7}>>{a * b + 7} pens.\n#### {a * b + 7}",
                    f"{a} * {b} = <<{a}*{b}={a * b}",
                    f"Perhaps about {a * b / 3:.2f} pens, assuming some are broken.\n#### {a * b / 3:.2f}",
                ][kind]
            writer.writerow([question, right, True, answer, f"#### {a * b}"])
    return path


@pytest.fixture(scope="module")
def judge_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("judge")
    data = write_answers(root / "gsm8k_responses.csv")
    split = split_outcomes(load_outcomes(data, drop_contaminated=False), SplitSpec("row", 0.5, 0))
    trained = train_judge(
        split, Pair(), seed=0, repeats=1, cache_dir=root / "cache", embedder=HashEmbedder(), grid=SMALL_GRID
    )
    path = root / "judge.json"
    trained.file.save(path)
    return data, path, root / "cache"


async def test_learned_judge_round_trip(judge_file: tuple[Path, Path, Path]) -> None:
    _, path, _ = judge_file
    stored = json.loads(path.read_text())
    assert stored["kind"] == "cascade-judge" and stored["training"]["split"]["by"] == "row"
    question = "Item 999: a shop packs 6 boxes with 7 pens each. How many pens are there?"
    body = {"messages": [{"role": "user", "content": question}]}
    good = "6 * 7 = <<6*7=42>>42 pens.\n#### 42"
    bad = "6 * 7 = <<6*7=49>>49 pens.\n#### 49"
    probe = LearnedJudge.load(path, threshold=0.5, embedder=HashEmbedder())
    assert probe.score(question, good) < probe.score(question, bad)
    # Between the two: the accept/escalate plumbing, with the threshold given directly.
    middle = (probe.score(question, good) + probe.score(question, bad)) / 2
    probe.close()
    judge = LearnedJudge.load(path, threshold=middle, embedder=HashEmbedder())
    again = LearnedJudge.load(path, threshold=middle, embedder=HashEmbedder())
    assert judge.score(question, good) == again.score(question, good)
    accepted, reason = await judge.accept(body, good, "stop")
    assert accepted and reason.startswith("learned judge: P(wrong)=")
    assert (await judge.accept(body, bad, "stop"))[0] is False
    judge.close()
    again.close()


def test_learned_judge_threshold_modes(judge_file: tuple[Path, Path, Path]) -> None:
    _, path, _ = judge_file
    share = LearnedJudge.load(path, escalate_share=0.3)
    assert share.threshold.share == 0.3
    quality = LearnedJudge.load(path, retain=0.95)
    assert quality.threshold.share is not None and 0.0 <= quality.threshold.share <= 1.0
    with pytest.raises(ValueError, match="exactly one"):
        LearnedJudge.load(path, threshold=0.5, retain=0.95)


def test_cascade_on_held_out_rows_beats_random(judge_file: tuple[Path, Path, Path]) -> None:
    data, path, cache = judge_file
    evaluation = evaluate(
        load_outcomes(data, drop_contaminated=False),
        judge=LearnedJudge.read(path),
        cache_dir=cache,
        embedder=HashEmbedder(),
    )
    curves = {c.name: c for c in evaluation.curves}
    learned = curves["cascade: learned judge"]
    oracle = next(m for m in evaluation.reference if m.name == "oracle")
    # ~40% of cheap answers are wrong, so the oracle's APGR is ~0.8; the judge must come close.
    assert learned.metrics.apgr > 0.9 * oracle.apgr
    assert learned.metrics.apgr > curves["random (seed 0)"].metrics.apgr + 0.2
    # A cascade pays the cheap call on every prompt: at full escalation it costs more than all-strong.
    assert learned.cascade_costs is not None
    assert learned.cascade_costs[-1] == evaluation.all_strong_cost + evaluation.all_weak_cost
    rule_point = next(p for p in evaluation.points if p.name.startswith("cascade: rule judge"))
    assert 0.0 < rule_point.strong_share < 1.0  # the truncated answers lack a final number


# -- LLM judge ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Score: 8/10", 0.8),
        ("The answer is correct and complete.\n\n**Score:** 9/10", 0.9),
        ("**Rating:** 4 out of 5", 0.8),
        ('{"score": 7}', 0.7),
        ('```json\n{"reasoning": "ok", "rating": "4/5"}\n```', 0.8),
        ('{"verdict": "FAIL"}', 0.0),
        ("[[9]]", 0.9),
        ("PASS", 1.0),
        ("no.", 0.0),
        ("7", 0.7),
        ("  8/10  ", 0.8),
        (
            "The answer computes 42 apples. Score: 3/10\nOn reflection the method is fine. Final score: 6/10",
            0.6,
        ),
        ("I would give this answer a 7.", 0.7),
        ("Grade: 85%", 0.85),
        ("eight out of ten", 0.8),
        ("Verdict: FAIL — the total is wrong.", 0.0),
        ("It uses 3 steps and 2 formulas; 4 out of 5 for clarity.", 0.8),
        ("score of 7.5", 0.75),
    ],
)
def test_llm_judge_parser_reads_messy_replies(reply: str, expected: float) -> None:
    assert parse_judge_score(reply) == pytest.approx(expected)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "1. Correctness: fine\n2. Style: fine",
        "Score: 12/10",
        "score: -1",
        "The answer has 3 steps.",
        "N/A",
    ],
)
def test_llm_judge_parser_refuses_what_it_cannot_trust(reply: str) -> None:
    assert parse_judge_score(reply) is None


def test_llm_judge_parser_other_scales() -> None:
    assert parse_judge_score("4", scale=5) == pytest.approx(0.8)
    assert parse_judge_score('{"score": 0.9}', scale=1) == pytest.approx(0.9)


async def test_llm_judge_accepts_escalates_and_survives_failures() -> None:
    seen: list[list[dict[str, Any]]] = []

    def replying(text: str) -> Any:
        async def complete(messages: list[dict[str, Any]]) -> str:
            seen.append(messages)
            return text

        return complete

    judge = LLMJudge(replying("Looks right.\nScore: 9/10"), min_score=0.7)
    assert await judge.accept(QUESTION, "12 apples", "stop") == (True, "LLM judge score 0.90 >= 0.70")
    assert "Tom has 3 bags" in seen[-1][1]["content"] and "12 apples" in seen[-1][1]["content"]
    assert (await LLMJudge(replying("Score: 4/10")).accept(QUESTION, "13", "stop"))[0] is False
    unreadable = await LLMJudge(replying("Hmm, hard to say.")).accept(QUESTION, "12", "stop")
    assert unreadable == (False, "LLM judge gave no readable score; escalating")

    async def broken(messages: list[dict[str, Any]]) -> str:
        raise TimeoutError("judge timed out")

    failed = await LLMJudge(broken).accept(QUESTION, "12", "stop")
    assert failed == (False, "LLM judge call failed (TimeoutError); escalating")
    calls_before = len(seen)
    assert (await judge.accept(QUESTION, "  ", "stop")) == (False, "empty answer")
    assert len(seen) == calls_before  # no judge call for an empty answer


def test_an_embedding_judge_uses_the_embedder_it_was_given() -> None:
    """A judge trained with embeddings embeds question and answer with the shared model, once each call
    (it used to reload a private copy on every call, or fail when given the shared one)."""
    import numpy as np

    from faregate.embedding.model import DIMENSIONS
    from faregate.learning.cascade_judges import JUDGE_FEATURES, KIND
    from faregate.learning.linear import LinearModel
    from faregate.learning.model_file import EMBEDDING_ID, ModelFile
    from faregate.learning.thresholds import Threshold

    width = 2 * DIMENSIONS + len(JUDGE_FEATURES)
    model = LinearModel(np.zeros(width), np.ones(width), np.zeros(width), 0.0)
    file = ModelFile(KIND, JUDGE_FEATURES, EMBEDDING_ID, ("question", "answer"), model, "s", "w")

    class Counting:
        calls = 0

        def embed(self, texts: list[str]) -> Any:
            Counting.calls += 1
            return np.zeros((len(texts), DIMENSIONS), dtype=np.float32)

    judge = LearnedJudge(file, Threshold.fixed(0.9), embedder=Counting())
    assert judge.score("What is 2 + 2?", "#### 4") == 0.5
    assert judge.score("What is 3 + 3?", "#### 6") == 0.5
    assert Counting.calls == 2
    judge.close()
