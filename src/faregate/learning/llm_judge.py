"""An LLM judge for the cascade: a model, reached through the gateway, grades the cheap answer.

The gateway provides the call (`complete`: chat messages in, the judge model's reply text out), so
this module holds only the rubric, the prompt and a forgiving score parser. Judge models answer
in many shapes — "Score: 8/10", "**Rating:** 4 out of 5", `{"score": 7}`, "[[9]]", "PASS", a bare
"7" — and sometimes revise themselves ("… Final score: 6/10"); the parser takes the last
labelled score, normalises it to [0, 1], and returns None when it finds nothing it can trust, in
which case the judge escalates (the safe side: the user gets the strong model's answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faregate.learning.cascade_judges import Verdict
from faregate.learning.text_features import last_user_text

Complete = Callable[[list[dict[str, Any]]], Awaitable[str]]

DEFAULT_SCALE = 10.0
DEFAULT_RUBRIC = (
    "You grade an AI assistant's answer to a user's request. Judge correctness first, then whether "
    "the answer is complete and does what was asked. Give one or two sentences of reasoning, then "
    'end with a last line exactly of the form "Score: N/10", where 10 is fully correct and complete '
    "and 1 is wrong or unhelpful."
)
# Long answers are cut for the judge: its cost must stay well below the strong model's.
MAX_ANSWER_CHARS = 8000

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_LABEL = r"(?:score|rating|grade|mark)"
_LABELLED = re.compile(
    _LABEL + r"\b[^\d\n-]{0,20}?" + _NUMBER + r"\s*(%|(?:/|out of|of)\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
_BRACKETS = re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]")
# Not from within a run of digits: from each of its digits \d+ took the rest of the run and gave
# it back (quadratic). The run's first digit reaches every end a later one does, and comes first.
_FRACTION = re.compile(r"(-?(?<!\d)\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)\b", re.IGNORECASE)
_GIVE = re.compile(r"\b(?:give|rate|award)\b[^.\n]{0,40}?\b(?:a|an)?\s*" + _NUMBER + r"\b", re.IGNORECASE)
# One \s* per run of spaces (an optional ":" or "*" brings its own): "\s*[:=]?\s*\**\s*" split a
# long run between three, every way, before giving up (cubic: 3,000 spaces took 296 s, the GIL
# held), and a judge may be talked by the answer it reads into writing anything.
_VERDICT = re.compile(
    r"\b(?:verdict|decision|judg(?:e)?ment)(?:\s*[:=])?(?:\s*\*+)?\s*(pass|fail|yes|no|accept|reject|correct|incorrect)\b",
    re.IGNORECASE,
)
_BARE_VERDICT = re.compile(r"^\W*(pass|fail|yes|no|accept|reject|correct|incorrect)\W*$", re.IGNORECASE)
# Spaces after the number are for \W* unless a "/" follows them (\s* then \W* was quadratic).
_BARE_NUMBER = re.compile(r"^\W*" + _NUMBER + r"(?:\s*/\s*(\d+(?:\.\d+)?))?\W*$")
_JSON = re.compile(r"\{[^{}]*\}", re.DOTALL)
_GOOD = frozenset({"pass", "yes", "accept", "correct"})


def _scaled(value: float, out_of: float) -> float | None:
    if out_of <= 0 or value < 0 or value > out_of:
        return None
    return value / out_of


def _from_json(text: str, scale: float) -> float | None:
    for blob in reversed(_JSON.findall(text)):
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            name = str(key).lower()
            if name in {"score", "rating", "grade", "mark"}:
                if isinstance(value, bool):
                    return 1.0 if value else 0.0
                if isinstance(value, int | float):
                    return _scaled(float(value), scale)
                if isinstance(value, str):
                    return parse_judge_score(value, scale)
            if name in {"verdict", "decision", "pass", "correct"}:
                if isinstance(value, bool):
                    return 1.0 if value else 0.0
                if isinstance(value, str) and value.strip().lower() in _GOOD | {
                    "fail",
                    "no",
                    "reject",
                    "incorrect",
                }:
                    return 1.0 if value.strip().lower() in _GOOD else 0.0
    return None


def parse_judge_score(text: str, scale: float = DEFAULT_SCALE) -> float | None:
    """The judge's score in [0, 1], or None when the reply holds no score to trust.

    Order of trust: a JSON object with a score/verdict; the last labelled score ("Score: 8/10",
    "rating of 4 out of 5", "grade: 85%"); MT-bench's [[8]]; a verdict line ("Verdict: PASS");
    the last "N/M" or "N out of M"; "I'd give it a 7"; a reply that is only a number or a verdict.
    Unlabelled numbers inside reasoning are never read as the score."""
    cleaned = text.replace("*", "").replace("`", "").strip()
    for word, value in _WORDS.items():
        cleaned = re.sub(rf"\b{word}\b(?=\s*(?:/|out of)\s*\w)", str(value), cleaned, flags=re.IGNORECASE)
        cleaned = re.sub(rf"(?<=out of )\b{word}\b", str(value), cleaned, flags=re.IGNORECASE)
    if not cleaned:
        return None
    from_json = _from_json(cleaned, scale)
    if from_json is not None:
        return from_json
    labelled = _LABELLED.findall(cleaned)
    if labelled:
        number, suffix, out_of = labelled[-1]
        if suffix == "%":
            return _scaled(float(number), 100.0)
        return _scaled(float(number), float(out_of) if out_of else scale)
    brackets = _BRACKETS.findall(cleaned)
    if brackets:
        return _scaled(float(brackets[-1]), scale)
    verdict = _VERDICT.findall(cleaned)
    if verdict:
        return 1.0 if verdict[-1].lower() in _GOOD else 0.0
    fractions = _FRACTION.findall(cleaned)
    if fractions:
        number, out_of = fractions[-1]
        return _scaled(float(number), float(out_of))
    given = _GIVE.findall(cleaned)
    if given:
        return _scaled(float(given[-1]), scale)
    bare = _BARE_VERDICT.match(cleaned)
    if bare:
        return 1.0 if bare.group(1).lower() in _GOOD else 0.0
    number = _BARE_NUMBER.match(cleaned)
    if number:
        return _scaled(float(number.group(1)), float(number.group(2)) if number.group(2) else scale)
    return None


class LLMJudge:
    """Accepts the cheap answer when the judge model's normalised score reaches `min_score`."""

    def __init__(
        self,
        complete: Complete,
        *,
        min_score: float = 0.7,
        scale: float = DEFAULT_SCALE,
        rubric: str = DEFAULT_RUBRIC,
        max_answer_chars: int = MAX_ANSWER_CHARS,
    ) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score is a fraction of the scale, within [0, 1]; got {min_score}")
        self.complete = complete
        self.min_score = min_score
        self.scale = scale
        self.rubric = rubric
        self.max_answer_chars = max_answer_chars

    def messages(self, request_body: Mapping[str, Any], answer_text: str) -> list[dict[str, Any]]:
        answer = answer_text[: self.max_answer_chars]
        request = last_user_text(request_body)
        return [
            {"role": "system", "content": self.rubric},
            {
                "role": "user",
                "content": (
                    f"[Request]\n{request}\n\n[Answer]\n{answer}\n\n[End of answer]\nGrade the answer."
                ),
            },
        ]

    async def accept(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> tuple[bool, str]:
        if not answer_text.strip():
            return Verdict(False, "empty answer")
        try:
            reply = await self.complete(self.messages(request_body, answer_text))
        except Exception as exc:  # the judge's own failure must not fail the request: escalate instead
            return Verdict(False, f"LLM judge call failed ({type(exc).__name__}); escalating")
        score = parse_judge_score(reply, self.scale)
        if score is None:
            return Verdict(False, "LLM judge gave no readable score; escalating")
        accepted = score >= self.min_score
        return Verdict(
            accepted, f"LLM judge score {score:.2f} {'>=' if accepted else '<'} {self.min_score:.2f}"
        )
