"""The eval scorers on known cases, and the judge parser on messy replies."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from faregate.evals.prompt_eval.judge import judge_prompt, parse_score
from faregate.evals.prompt_eval.scorers import check_expected, extract_number, score


def test_exact_contains_regex() -> None:
    assert score("exact", "  Paris\n", "Paris") == 1.0
    assert score("exact", "paris", "Paris") == 0.0
    assert score("contains", "The capital is PARIS.", "paris") == 1.0
    assert score("contains", "Lyon", "Paris") == 0.0
    assert score("regex", "order #A-1234 shipped", r"#A-\d{4}") == 1.0
    assert score("regex", "order shipped", r"#A-\d{4}") == 0.0
    assert score("exact", "anything", None) == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She sells 9 eggs at $2 each, so 9 * 2 = 18.\n#### 18", "18"),
        ("3 + 4 = 7, then 7 * 2 = 14. The answer is 14.", "14"),
        ("The final answer is: **1,234**", "1234"),
        ("So the result is \\boxed{-3.5}.", "-3.5"),
        ("It costs $1,250.50 in total.", "1250.50"),
        ("Janet has 16 eggs, eats 3 and bakes 4, leaving 9", "9"),
        ("no digits here", None),
    ],
)
def test_numeric_extraction(text: str, number: str | None) -> None:
    assert extract_number(text) == (None if number is None else Decimal(number))


def test_numeric_scorer_compares_values_not_text() -> None:
    assert score("numeric", "#### 18.0", "18") == 1.0
    assert score("numeric", "The answer is 17", "#### 18") == 0.0
    assert score("numeric", "I am not sure", "18") == 0.0


def test_json_and_json_schema() -> None:
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
        }
    )
    assert score("json", '{"a": 1}', None) == 1.0
    assert score("json", '```json\n{"a": 1}\n```', None) == 1.0
    assert score("json", "{'a': 1}", None) == 0.0
    assert score("json-schema", '{"name": "Ada", "age": 36}', schema) == 1.0
    assert score("json-schema", '{"name": "Ada", "age": -1}', schema) == 0.0
    assert score("json-schema", '{"name": "Ada"}', schema) == 0.0
    assert score("json-schema", "not json", schema) == 0.0


def test_bad_expected_values_fail_before_any_request() -> None:
    with pytest.raises(ValueError):
        check_expected("regex", "(unclosed")
    with pytest.raises(ValueError):
        check_expected("json-schema", '{"type": "nonsense"}')
    with pytest.raises(ValueError):
        check_expected("numeric", "no number")
    check_expected("numeric", "#### 42")


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("Score: 8/10", 0.8),
        ("8", 0.8),
        ("**7**", 0.7),
        ("The answer is mostly right but misses a step (2 of 3 points).\n\nRating: 6 out of 10", 0.6),
        ('{"score": 9, "reason": "good"}', 0.9),
        ("[[5]]", 0.5),
        ("I'd give it a 4.", 0.4),
        ("Score: 4/5", 0.8),
        ("The assistant compares 3 options and 12 figures.", None),
        ("", None),
    ],
)
def test_judge_scores_are_parsed_from_messy_replies(reply: str, value: float | None) -> None:
    got = parse_score(reply)
    assert got == (None if value is None else pytest.approx(value))


def test_judge_prompt_keeps_literal_braces() -> None:
    text = judge_prompt('Q: {prompt} A: {answer} ref: {expected} json: {"k": 1}', "2+2?", None, "4")
    assert text == 'Q: 2+2? A: 4 ref:  json: {"k": 1}'


def test_judge_prompt_fills_the_rubric_only_not_the_texts_it_inserts() -> None:
    # A question about templates may hold "{answer}" itself: the judge must see it as written, not
    # with the model's answer pasted into the question (nor the answer into the reference).
    rubric = "Q: {prompt} | ref: {expected} | A: {answer}"
    text = judge_prompt(rubric, "What does f'{answer}' print?", "the value of {answer}", "42")
    assert text == "Q: What does f'{answer}' print? | ref: the value of {answer} | A: 42"
