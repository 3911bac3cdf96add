"""Regular expressions over text a client or a model wrote stay linear in its length.

Prompts (the router's features, the semantic cache's guards) come from any API key holder, up to
the body limit; answers (the cascade's checks and judges, the quality comparators) are whatever
a model was asked to write. Python's `re` holds the GIL for a whole scan, so one scan that
backtracks over a long run of spaces or digits stops every request of the process.

Each input below took minutes to hours with the patterns it guards against (the tests' timeout
fails them); each scan now takes milliseconds. The `*_finds_as_before` tests hold the new
patterns to the old ones' findings on many short texts: the features trained models read, and
the verdicts, are unchanged.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from faregate.cache import guards
from faregate.cache.guard_numbers import words
from faregate.learning import llm_judge, text_features
from faregate.learning.llm_judge import parse_judge_score
from faregate.learning.online import comparators
from faregate.learning.text_features import final_number

# A scan that backtracks quadratically takes hours at these lengths; a linear one milliseconds.
LONG = 200_000
pytestmark = pytest.mark.timeout(60)


def same_findings(old: re.Pattern[str], new: re.Pattern[str], tokens: list[str], cases: int = 20_000) -> None:
    """`new` finds what `old` finds in every text of up to 9 `tokens` (seeded: the same each run)."""
    rnd = random.Random(7)
    for _ in range(cases):
        text = "".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 9)))
        assert new.findall(text) == old.findall(text), text


def test_final_number_of_an_answer_with_long_runs_of_spaces() -> None:
    # Three \s* in a row after "answer is" backtracked cubically: 3,000 spaces took 97 s.
    assert final_number("The answer is" + " " * LONG + "unknown") is None
    assert final_number("#### " + " " * LONG + "x") is None
    assert final_number("The answer is:" + " " * LONG + "$" + " " * LONG + "42") == 42.0


def test_final_number_finds_as_before() -> None:
    number = r"(-?\d[\d,]*(?:\.\d+)?)"
    old = re.compile(
        r"(?:####\s*|\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*[:=]?\s*)\$?\s*" + number, re.IGNORECASE
    )
    tokens = [
        "####",
        "answer",
        " is",
        "is",
        ":",
        "=",
        "$",
        " ",
        "\n",
        "1",
        "2",
        ",",
        ".",
        "-",
        "final ",
        "the ",
    ]
    same_findings(old, text_features._FINAL, tokens)


def test_judge_score_of_a_reply_with_long_runs_of_spaces() -> None:
    # A judge reads the answer it scores, and may be talked into echoing anything: "Verdict" and
    # 3,000 spaces took 296 s (three \s* in a row); a number and spaces, quadratic.
    assert parse_judge_score("Verdict" + " " * LONG + ":" + " " * LONG + "maybe") is None
    assert parse_judge_score("Verdict:" + " " * LONG + "PASS") == 1.0
    assert parse_judge_score("7" + " " * LONG + "?" * 3 + "x") is None
    assert parse_judge_score("7" + " " * LONG + "/ 10") == 0.7
    assert parse_judge_score("1" * LONG + " out of ten") is None


def test_judge_verdict_fraction_and_bare_number_find_as_before() -> None:
    verdicts = "(pass|fail|yes|no|accept|reject|correct|incorrect)"
    old_verdict = re.compile(
        r"\b(?:verdict|decision|judg(?:e)?ment)\s*[:=]?\s*\**\s*" + verdicts + r"\b", re.IGNORECASE
    )
    words = ["verdict", "judgement", "judgment", ":", "=", "*", " ", "\n", "pass", "no", "x", "s"]
    same_findings(old_verdict, llm_judge._VERDICT, words)
    number = r"(-?\d+(?:\.\d+)?)"
    old_bare = re.compile(r"^\W*" + number + r"\s*(?:/\s*(\d+(?:\.\d+)?))?\W*$")
    same_findings(old_bare, llm_judge._BARE_NUMBER, ["1", "2", ".", "/", " ", "\n", "-", "x", "!", "_"])
    old_fraction = re.compile(number + r"\s*(?:/|out of)\s*(\d+(?:\.\d+)?)\b", re.IGNORECASE)
    same_findings(old_fraction, llm_judge._FRACTION, ["1", "2", ".", "/", " ", "-", "out of", "x", "0"])


def test_semantic_cache_choice_guard_on_long_blank_prompts() -> None:
    # Any key's prompt: 20 kB of " \n" took 7 s, a line with a long run of spaces alike.
    assert not guards.choices_differ(" \n" * LONG, " \n" * LONG + "x")
    spaced = "A. red" + " " * LONG + "wine\nB. white\n"
    assert guards.choices_differ(spaced, "A. white\nB. red wine\n")
    assert not guards.choices_differ(spaced, "A. red wine\nB. white")


def test_semantic_cache_choice_guard_finds_as_before() -> None:
    old = re.compile(r"^\s*\(?([A-Ha-h]|\d{1,2})[.)]\s+(.+?)\s*$", re.MULTILINE)
    tokens = ["A", "b", "1", "12", ".", ")", "(", " ", "\n", "\r", "\u2028", "\x0b", "x", "foo"]
    rnd = random.Random(7)
    for _ in range(20_000):
        text = "".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 9)))
        # Only each option's words are compared (guards.choices_differ).
        found = [(key, words(option)) for key, option in guards._CHOICE.findall(text)]
        assert found == [(key, words(option)) for key, option in old.findall(text)], text


def test_router_prompt_features_of_long_blank_prompts() -> None:
    # Any key's prompt, on a route with a trained router: 20 kB of " \n" took 1.7 s, 200 kB minutes.
    features = text_features.prompt_features("A. yes\nB. no\n" + " \n" * LONG + "Which?")
    assert features[text_features.PROMPT_NAMES.index("options")] == 2


def test_router_prompt_features_of_long_words() -> None:
    # One long word (a pasted hash, base64, a number): 40 kB of "a1" took 3.8 s.
    features = text_features.prompt_features("a1" * LONG + " and f()")
    assert features[text_features.PROMPT_NAMES.index("log_code_markers")] == math.log1p(1)


def test_router_code_marks_find_as_before() -> None:
    old = re.compile(
        r"```|\bdef |\breturn\b|\bimport\b|\bfunction\b|[{};]|==|!=|->|\w+\(\)|\bint\b|\bprint\("
    )
    tokens = [
        "a",
        "1",
        "_",
        "é",
        "()",
        "(",
        ")",
        " ",
        "def ",
        "return",
        "int",
        "print(",
        "function",
        "{",
        "=",
        "-",
        ">",
    ]
    same_findings(old, text_features._CODE, tokens)


def test_router_options_find_as_before() -> None:
    # Exactly: the trained routers read how many options there are and their mean length.
    old = re.compile(r"^\s*\(?[A-J][.)]\s+(.*)$", re.MULTILINE)
    tokens = ["A", "J", "K", ".", ")", "(", " ", "\n", "\r", "\u2028", "\x0b", "x", "foo"]
    same_findings(old, text_features._OPTION, tokens)


def test_quality_comparators_of_long_blank_answers() -> None:
    # The answers verified against a reference model's: whatever a model was asked to write.
    assert comparators.final_answer("My answer" + " " * LONG + "is B") == "B"
    assert comparators.final_answer("No answer" + " " * LONG + "yet") is None
    assert comparators.final_answer("Thinking" + " \n" * LONG + "so B. It is 7.") == "7"


def test_quality_comparator_choices_find_as_before() -> None:
    old = re.compile(
        r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?(?![A-Za-z])|^\s*\(?([A-J])\)?[.):]?\s*$",
        re.IGNORECASE | re.MULTILINE,
    )
    tokens = [
        "answer",
        "option",
        " is",
        "is",
        "i",
        ":",
        " ",
        "\n",
        "\r",
        "\u2028",
        "A",
        "b",
        "K",
        "(",
        ")",
        ".",
    ]
    same_findings(old, comparators._CHOICE, tokens)


def test_learned_judge_equations_of_long_numbers_and_chains() -> None:
    # Tried from each digit, or each term, the rest was read again (quadratic: 20,000 digits took seconds).
    assert text_features.equations("1" * LONG) == []
    assert text_features.equations("-1" * LONG) == []
    assert text_features.equations("1+" * LONG + "1 1=2") == []
    assert text_features.equations("1" * LONG + "=" * LONG + "1/2") == []
    assert text_features.equations("1+" * LONG + "1 = 2")[0][1] == "2"


def test_learned_judge_equations_find_as_before() -> None:
    number = r"-?\d[\d,]*(?:\.\d+)?"
    old = re.compile(rf"({number}(?:\s*[-+*/x×÷]\s*{number})+)\s*=\s*\$?\s*({number})(?!\d|[/.]\d)")
    tokens = [
        "1",
        "23",
        "٣",
        ",",
        ".",
        "1.5",
        "-",
        "+",
        "*",
        "/",
        "x",
        "×",
        "÷",
        "=",
        " = ",
        " ",
        "\n",
        "$",
        "a",
    ]
    rnd = random.Random(7)
    for _ in range(20_000):
        text = "".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 14)))
        assert text_features.equations(text) == old.findall(text), text


def test_router_prompt_features_of_a_number_past_the_largest_float() -> None:
    # 309 digits read as inf: log_max_number was inf, and the router's score with it 0, 1 or NaN.
    features = text_features.prompt_features("Is " + "9" * 400 + " prime?")
    assert np.isfinite(features).all()
    assert features[text_features.PROMPT_NAMES.index("log_max_number")] == pytest.approx(308.25, abs=0.01)
