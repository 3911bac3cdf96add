"""Is the cheap answer as good as the reference? Comparators for shadow verification.

A comparator sees the reference answer (the strong path's, or a fresh call's for a cache hit) and
the candidate (the cheap model's, or the cached answer) and says whether the candidate is
acceptable. Which one fits depends on the route's traffic: `exact` for classification labels,
`numeric` / `final_answer` for worked answers ("#### 18", "The answer is (B)"), `json` for
structured output, `embedding` for free text (answer-embedding similarity), and an LLM judge
through the gateway when nothing mechanical fits. They err towards "not acceptable" when they
cannot tell (no final answer found, invalid JSON): a verification that cannot confirm the cheap
answer counts against it, which keeps the calibration on the safe side.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import numpy as np

from faregate.learning.text_features import final_number_text, written_numbers


class Comparison(NamedTuple):
    acceptable: bool
    # How close, in [0, 1] (1 = equivalent); the similarity for `embedding`.
    score: float
    reason: str


class Comparator(Protocol):
    @property
    def name(self) -> str: ...

    def compare(self, reference: str, candidate: str) -> Comparison: ...


_SPACE = re.compile(r"\s+")
# A stated choice letter. One \s* per run of spaces, and a line's leading spaces its own: "\s*(?:is|:)?\s*"
# split a long run between two every way, and "^\s*" crossed newlines, giving every space of a blank
# run back at each of its lines (quadratic in an answer: 20 kB of " \n" took 2 s, the GIL held).
_CHOICE = re.compile(
    r"(?:answer|option|choice)(?:\s*(?:is|:))?\s*\(?([A-J])\)?(?![A-Za-z])|^[^\S\n]*\(?([A-J])\)?[.):]?\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text.strip().lower()).rstrip(".")


@dataclass(slots=True, frozen=True)
class Exact:
    name: str = "exact"

    def compare(self, reference: str, candidate: str) -> Comparison:
        same = _normal(reference) == _normal(candidate)
        return Comparison(same, float(same), "same text" if same else "different text")


@dataclass(slots=True, frozen=True)
class Numeric:
    """The final number of each answer, equal within a relative tolerance."""

    tolerance: float = 1e-6
    name: str = "numeric"

    def compare(self, reference: str, candidate: str) -> Comparison:
        ref_text, cand_text = final_number_text(reference), final_number_text(candidate)
        if ref_text is None or cand_text is None:
            return Comparison(False, 0.0, "no final number to compare")
        ref, cand = float(ref_text), float(cand_text)
        if math.isfinite(ref) and math.isfinite(cand):
            same = math.isclose(ref, cand, rel_tol=self.tolerance, abs_tol=self.tolerance)
            return Comparison(same, float(same), f"{cand:g} vs {ref:g}")
        # Past the largest float (309 digits or more) both are inf, and any two were equal.
        exact_ref, exact_cand = Decimal(ref_text), Decimal(cand_text)
        tolerance = Decimal(repr(self.tolerance))
        same = abs(exact_ref - exact_cand) <= max(tolerance * max(abs(exact_ref), abs(exact_cand)), tolerance)
        return Comparison(same, float(same), f"{exact_cand:.6g} vs {exact_ref:.6g}")


def final_answer(text: str) -> str | None:
    """A worked answer's final answer: a stated choice letter ("The answer is (B)"), else its stated
    final number ("#### 18", "the answer is 18"), else the last number it writes (a strong model's
    free-form working often ends on its result without stating it: "... = $18 every day."), else
    None."""
    choices = [next(g for g in m.groups() if g) for m in _CHOICE.finditer(text)]
    if choices:
        return choices[-1].upper()
    number = final_number_text(text)
    if number is None:
        written = written_numbers(text)
        number = written[-1] if written else None
    return None if number is None else _canonical(number)


def _canonical(number: str) -> str:
    """A number as written ("1,234.50") in one form for every way of writing it ("1234.5"), exact
    at any size: "g" kept 6 significant digits, and 1,234,567 and 1,234,568 were the same answer."""
    return f"{Decimal(number.replace(',', '')).normalize():f}"


@dataclass(slots=True, frozen=True)
class FinalAnswer:
    name: str = "final_answer"

    def compare(self, reference: str, candidate: str) -> Comparison:
        ref, cand = final_answer(reference), final_answer(candidate)
        if ref is None or cand is None:
            return Comparison(False, 0.0, "no final answer to compare")
        return Comparison(ref == cand, float(ref == cand), f"{cand} vs {ref}")


def _fenced(text: str) -> str:
    match = re.match(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", text, re.DOTALL | re.IGNORECASE)
    return match.group(1) if match else text


@dataclass(slots=True, frozen=True)
class JsonEqual:
    """Equal JSON values (key order and formatting ignored)."""

    name: str = "json"

    def compare(self, reference: str, candidate: str) -> Comparison:
        try:
            ref: Any = json.loads(_fenced(reference))
            cand: Any = json.loads(_fenced(candidate))
        except ValueError:
            return Comparison(False, 0.0, "invalid JSON")
        return Comparison(ref == cand, float(ref == cand), "equal JSON" if ref == cand else "different JSON")


Embed = Callable[[Sequence[str]], Any]


@dataclass(slots=True, frozen=True)
class EmbeddingSimilarity:
    """Cosine similarity of the two answers' sentence embeddings at or above `threshold`.

    `embed` returns unit vectors (the shared MiniLM's `embed`); it is called off the event loop
    by the caller, like every embedding."""

    embed: Embed
    threshold: float = 0.9
    name: str = "embedding"

    def compare(self, reference: str, candidate: str) -> Comparison:
        vectors = np.asarray(self.embed([reference, candidate]), dtype=np.float64)
        similarity = float(vectors[0] @ vectors[1])
        ok = similarity >= self.threshold
        return Comparison(ok, max(0.0, similarity), f"answer similarity {similarity:.3f}")


# The gateway fills this in: judge messages in, the judge model's reply text out (a billed call).
Complete = Callable[[list[dict[str, Any]]], Awaitable[str]]


class LLMJudgeComparator:
    """Asks a judge model, through the gateway, whether the candidate answer is as good as the
    reference. Asynchronous (it is a model call); the gateway supplies `complete` and bills it as
    verification cost. An unreadable verdict counts as not acceptable."""

    name = "llm_judge"

    def __init__(self, complete: Complete, min_score: float = 0.7) -> None:
        self._complete = complete
        self.min_score = min_score

    def messages(self, question: str, reference: str, candidate: str) -> list[dict[str, Any]]:
        return [
            {
                "role": "system",
                "content": "You compare two answers to the same request. Score from 0 to 10 how fully "
                "answer B is as correct and useful as answer A. Reply with 'Score: N'.",
            },
            {
                "role": "user",
                "content": f"Request:\n{question}\n\nAnswer A (reference):\n{reference}\n\n"
                f"Answer B:\n{candidate}",
            },
        ]

    async def compare(self, question: str, reference: str, candidate: str) -> Comparison:
        from faregate.learning.llm_judge import parse_judge_score

        reply = await self._complete(self.messages(question, reference, candidate))
        score = parse_judge_score(reply, 10.0)
        if score is None:
            return Comparison(False, 0.0, "judge gave no readable score")
        return Comparison(score >= self.min_score, score, f"judge score {score:.2f}")


MECHANICAL: dict[str, Callable[[], Comparator]] = {
    "exact": Exact,
    "numeric": Numeric,
    "final_answer": FinalAnswer,
    "json": JsonEqual,
}


def mechanical(name: str) -> Comparator:
    """A comparator that needs nothing but the two texts; `embedding` and `llm_judge` need more."""
    try:
        return MECHANICAL[name]()
    except KeyError:
        raise ValueError(
            f"unknown comparator {name!r}; one of {', '.join(MECHANICAL)}, embedding, llm_judge"
        ) from None
