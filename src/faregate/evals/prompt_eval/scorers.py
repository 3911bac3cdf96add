"""Scorers for `faregate eval`: how one answer is graded against the item's expected value.

Every scorer returns a float in [0, 1]. The rule-based ones are pass/fail (exactly 0.0 or 1.0),
which lets the report use pass-rate statistics (Wilson interval, McNemar); the LLM judge
returns a graded score, which gets mean-score statistics (t interval, Wilcoxon).

The rule-based scorers are pure and cheap, so they are applied at report time: changing the
scorer re-grades saved answers without calling a model again. The judge costs requests, so
its score is stored with the answer (see eval_runner.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

import jsonschema

ScorerName = Literal["exact", "contains", "regex", "numeric", "json", "json-schema", "llm-judge"]
SCORERS: tuple[str, ...] = get_args(ScorerName)
# Scorers that need an `expected` value on every item.
NEEDS_EXPECTED: frozenset[str] = frozenset({"exact", "contains", "regex", "numeric", "json-schema"})

# A number as people and models write it: "-1,234.5", "$42", "3.", ".5", "1e3" is not needed.
_NUMBER = r"[-+]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
# Most to least explicit: GSM8K's "#### 42", LaTeX \boxed{42}, "the (final) answer is 42".
_MARKED = (
    re.compile(rf"####\s*({_NUMBER})"),
    re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}"),
    re.compile(rf"answer\s*(?:is|:|=)?\s*[:=]?\s*\**\s*({_NUMBER})", re.IGNORECASE),
)
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def _to_decimal(text: str) -> Decimal | None:
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def extract_number(text: str) -> Decimal | None:
    """The final answer's number: a marked one ("#### 42", "\\boxed{42}", "The answer is 42")
    wins, the last marker in the text if several; otherwise the last number in the text.
    Models restate the question's numbers while reasoning, so the last one is the answer."""
    for pattern in _MARKED:
        found = pattern.findall(text)
        if found:
            return _to_decimal(found[-1])
    numbers = _NUMBER_RE.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def strip_fence(text: str) -> str:
    """A reply wrapped in a ```json fence holds JSON all the same."""
    text = text.strip()
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def parse_json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(strip_fence(text))
    except ValueError:
        return False, None


def exact(answer: str, expected: str) -> float:
    """Equal after trimming surrounding whitespace (case matters: "Paris" is not "paris")."""
    return float(answer.strip() == expected.strip())


def contains(answer: str, expected: str) -> float:
    """The expected text appears in the answer, ignoring case."""
    return float(expected.strip().casefold() in answer.casefold())


def regex(answer: str, expected: str) -> float:
    """`expected` is a Python regular expression searched for anywhere in the answer."""
    return float(re.search(expected, answer) is not None)


def numeric(answer: str, expected: str) -> float:
    """The answer's final number equals the expected one (expected may itself be "#### 42")."""
    want = extract_number(expected)
    got = extract_number(answer)
    return float(want is not None and got is not None and got == want)


def valid_json(answer: str, expected: str) -> float:
    return float(parse_json(answer)[0])


def json_schema(answer: str, expected: str) -> float:
    """The answer is JSON that validates against `expected`, a JSON Schema (as JSON text)."""
    ok, value = parse_json(answer)
    if not ok:
        return 0.0
    schema = json.loads(expected)
    validator = jsonschema.validators.validator_for(schema)(schema)
    return float(validator.is_valid(value))


RULES: dict[str, Callable[[str, str], float]] = {
    "exact": exact,
    "contains": contains,
    "regex": regex,
    "numeric": numeric,
    "json": valid_json,
    "json-schema": json_schema,
}


def score(name: str, answer: str, expected: str | None) -> float:
    """Grade with a rule-based scorer; an item without an expected value fails the scorers that need one."""
    if name not in RULES:
        raise ValueError(f"{name!r} is not a rule-based scorer (one of {', '.join(RULES)})")
    if expected is None and name in NEEDS_EXPECTED:
        return 0.0
    return RULES[name](answer, expected or "")


def check_expected(name: str, expected: str) -> None:
    """Fail (ValueError) before any request is sent when an expected value cannot work with the scorer."""
    try:
        if name == "regex":
            re.compile(expected)
        elif name == "json-schema":
            schema = json.loads(expected)
            jsonschema.validators.validator_for(schema).check_schema(schema)
    except (re.error, ValueError, jsonschema.exceptions.SchemaError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
    if name == "numeric" and extract_number(expected) is None:
        raise ValueError(f"no number in expected value {expected!r}")


def is_binary(name: str) -> bool:
    return name != "llm-judge"
