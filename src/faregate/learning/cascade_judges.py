"""Judges for a cheap-first cascade: ask the cheap model, judge its answer, escalate if it fails.

A judge answers one question — is this answer good enough to return? — through one protocol:

    async def accept(request_body, answer_text, finish_reason) -> (accepted, reason)

Three kinds, combinable with AllOf (every judge must accept; the first refusal names the reason):

- RuleJudge: cheap, certain checks: empty, a refusal, cut off at max_tokens (finish_reason
  "length"), invalid JSON when the request asked for JSON (response_format), a required format
  missing (a regex, or a final numeric answer such as GSM8K's "#### 18" / "The answer is 18").
- LearnedJudge: a logistic scorer trained FrugalGPT-style by `faregate router train-judge` on
  recorded (question, cheap answer, correct) data; it predicts P(the cheap answer is wrong) from
  the question and the answer (finished? arithmetic consistent? the question's quantities used?
  hedging? plus, if cross-validation chose them, the sentence embeddings of both) and escalates
  above a threshold set like the router's: fixed, a target escalation share, or a target quality.
- LLMJudge (learning/llm_judge.py): asks a model through the gateway to grade the answer.

Rule checks and the hand-made features take well under a millisecond; a learned judge that
embeds runs the embedding on its worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from faregate.embedding.model import ModelUnavailable
from faregate.learning.complexity_router import SentenceEmbedder
from faregate.learning.linear import Array
from faregate.learning.model_file import ModelFile, load_model_file
from faregate.learning.text_features import (
    ANSWER_NAMES,
    PROMPT_NAMES,
    answer_features,
    final_number,
    last_user_text,
    prompt_features,
)
from faregate.learning.thresholds import DEFAULT_WINDOW, Threshold, share_for_quality

if TYPE_CHECKING:
    # onnxruntime (~40 MB) is imported only when a model is actually loaded.
    from faregate.embedding.embedder import Vector

log = logging.getLogger("faregate.routing")

KIND = "cascade-judge"
# The reason given when a learned judge cannot score an answer, which is then escalated.
UNSCORED = "learned judge: cannot score (its embedding model failed to load): escalated"
JUDGE_FEATURES: tuple[str, ...] = (
    *(f"question.{n}" for n in PROMPT_NAMES),
    *(f"answer.{n}" for n in ANSWER_NAMES),
)


class Verdict(NamedTuple):
    accepted: bool
    reason: str


class Judge(Protocol):
    async def accept(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> tuple[bool, str]: ...


# -- rule checks ----------------------------------------------------------------------------------------

# A check returns the reason to refuse the answer, or None when it passes.
Check = Callable[[Mapping[str, Any], str, "str | None"], "str | None"]

_REFUSAL = re.compile(
    r"^\s*(?:I(?:'m| am) sorry|I apologi[sz]e|I can(?:not|'t)|I(?:'m| am) (?:unable|not able))\b"
    r"|\bas an AI (?:language )?model\b",
    re.IGNORECASE,
)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


def check_empty(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
    return "empty answer" if not answer.strip() else None


def check_refusal(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
    # Only the opening or an explicit "as an AI model": "I can't" deep in a worked answer is fine.
    return "refusal" if _REFUSAL.search(answer[:200]) else None


def check_truncated(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
    return "cut off at max_tokens (finish_reason=length)" if finish_reason == "length" else None


def wants_json(body: Mapping[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in {
        "json_object",
        "json_schema",
    }


def check_json(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
    """Invalid JSON when response_format asked for JSON (a fenced ```json block is tolerated)."""
    if not wants_json(body):
        return None
    text = answer.strip()
    fenced = _FENCE.match(text)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return "invalid JSON although response_format asked for JSON"
    return None


def check_final_number(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
    """A worked math answer must end in a stated number ("#### 18", "The answer is 18")."""
    return None if final_number(answer) is not None else "no final numeric answer"


def required_pattern(pattern: str, what: str | None = None) -> Check:
    """A check that the answer matches `pattern` (re.search, multiline), e.g. r"^Answer: [A-D]$"."""
    compiled = re.compile(pattern, re.MULTILINE)
    label = what or f"required format /{pattern}/"

    def check(body: Mapping[str, Any], answer: str, finish_reason: str | None) -> str | None:
        return None if compiled.search(answer) else f"missing {label}"

    return check


DEFAULT_CHECKS: tuple[Check, ...] = (check_empty, check_truncated, check_refusal, check_json)
MATH_CHECKS: tuple[Check, ...] = (*DEFAULT_CHECKS, check_final_number)


class RuleJudge:
    """Refuses an answer that fails any check; the checks run in order and the first failure wins."""

    def __init__(self, checks: Sequence[Check] = DEFAULT_CHECKS) -> None:
        self.checks = tuple(checks)

    def verdict(self, body: Mapping[str, Any], answer: str, finish_reason: str | None) -> Verdict:
        for check in self.checks:
            reason = check(body, answer, finish_reason)
            if reason is not None:
                return Verdict(False, reason)
        return Verdict(True, "passed rule checks")

    async def accept(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> tuple[bool, str]:
        return self.verdict(request_body, answer_text, finish_reason)


class AllOf:
    """Accept only when every judge accepts; cheap judges first, so the costly ones run less."""

    def __init__(self, *judges: Judge) -> None:
        if not judges:
            raise ValueError("AllOf needs at least one judge")
        self.judges = judges

    async def accept(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> tuple[bool, str]:
        reasons = []
        for judge in self.judges:
            accepted, reason = await judge.accept(request_body, answer_text, finish_reason)
            if not accepted:
                return Verdict(False, reason)
            reasons.append(reason)
        return Verdict(True, "; ".join(reasons))


# -- learned judge --------------------------------------------------------------------------------------


def judge_matrix(
    questions: Sequence[str],
    answers: Sequence[str],
    finish_reasons: Sequence[str | None],
    vectors: Sequence[Array | Vector] = (),
) -> Array:
    """The judge's inputs, one row per (question, answer): embeddings first (if any), then features."""
    hand = np.stack(
        [
            np.concatenate([prompt_features(q), answer_features(q, a, f)])
            for q, a, f in zip(questions, answers, finish_reasons, strict=True)
        ]
    )
    return np.hstack([*(np.asarray(v, dtype=np.float64) for v in vectors), hand])


class LearnedJudge:
    """Escalates when the trained P(cheap answer is wrong) reaches the threshold."""

    def __init__(
        self,
        file: ModelFile,
        threshold: Threshold,
        *,
        embedder: SentenceEmbedder | None = None,
        executor: Executor | None = None,
    ) -> None:
        if file.embedded not in ((), ("question", "answer")):
            raise ValueError(f"a cascade judge embeds nothing or (question, answer), not {file.embedded}")
        self.file = file
        self.threshold = threshold
        self._embedder = embedder
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-judge")

    @staticmethod
    def read(path: str | Path) -> ModelFile:
        return load_model_file(path, KIND, JUDGE_FEATURES)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        threshold: float | None = None,
        escalate_share: float | None = None,
        retain: float | None = None,
        window: int = DEFAULT_WINDOW,
        embedder: SentenceEmbedder | None = None,
        executor: Executor | None = None,
    ) -> LearnedJudge:
        """Give exactly one of: a score threshold, a target share of escalations, or a target quality
        (share of the strong model's accuracy to keep, read off the file's calibration curve)."""
        file = cls.read(path)
        if sum(v is not None for v in (threshold, escalate_share, retain)) != 1:
            raise ValueError("give exactly one of threshold, escalate_share or retain")
        if threshold is not None:
            policy = Threshold.fixed(threshold)
        else:
            share = escalate_share if retain is None else share_for_quality(file.calibration, retain)
            policy = Threshold(share=share, reference=file.reference_scores, window=window)
        return cls(file, policy, embedder=embedder, executor=executor)

    @property
    def embeds(self) -> bool:
        return bool(self.file.embedded)

    def score_vectors(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        finish_reasons: Sequence[str | None],
        vectors: Sequence[Array | Vector] = (),
    ) -> Array:
        """P(answer wrong) for answers whose embeddings are known (training, replay)."""
        return self.file.model.predict(judge_matrix(questions, answers, finish_reasons, vectors))

    def score(self, question: str, answer: str, finish_reason: str | None = None) -> float:
        vectors: list[Array] = []
        if self.embeds:
            if self._embedder is None:
                from faregate.embedding.embedder import Embedder

                self._embedder = Embedder.load()
            both = np.asarray(self._embedder.embed([question, answer]), dtype=np.float64)
            vectors = [both[:1], both[1:]]
        return float(self.score_vectors([question], [answer], [finish_reason], vectors)[0])

    async def score_answer(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> float:
        """P(answer wrong), off the event loop when it embeds."""
        question = last_user_text(request_body)
        if self.embeds:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self.score, question, answer_text, finish_reason
            )
        # Regular expressions over two strings: cheaper than a thread hop.
        return self.score(question, answer_text, finish_reason)

    async def score_or_refusal(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> float | Verdict:
        """P(answer wrong); or, when the judge cannot score, the refusal that escalates the answer,
        as a router that cannot score sends the prompt to the strong model: the judge's failure
        must not fail the request."""
        try:
            return await self.score_answer(request_body, answer_text, finish_reason)
        except ModelUnavailable:
            # Logged once per try of the load (embedding/load_backoff.py).
            return Verdict(False, UNSCORED)
        except Exception as exc:
            log.exception("the cascade's learned judge failed to score an answer; escalating it")
            return Verdict(False, f"learned judge: cannot score ({type(exc).__name__}): escalated")

    async def accept(
        self, request_body: Mapping[str, Any], answer_text: str, finish_reason: str | None
    ) -> tuple[bool, str]:
        score = await self.score_or_refusal(request_body, answer_text, finish_reason)
        if isinstance(score, Verdict):
            return score
        threshold = self.threshold.value
        if self.threshold.decide(score):
            return Verdict(False, f"learned judge: P(wrong)={score:.2f} >= {threshold:.2f}")
        return Verdict(True, f"learned judge: P(wrong)={score:.2f} < {threshold:.2f}")

    def close(self) -> None:
        if self._owns_executor and isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False)
