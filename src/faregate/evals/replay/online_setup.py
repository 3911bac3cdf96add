"""What `faregate replay --online` replays: the stream, its prior scores and the model file's curve.

`prepare` reads `router:FILE` (a trained router: its scores are the prior) or `judge:FILE` (a
cascade: the learned judge's P(cheap answer wrong), after the rule checks, is the prior), keeps the
file's held-out prompts if asked (never the ones it was trained on), embeds the prompts (through
the on-disk vector cache) and carries the file's calibration curve for the prior pseudo-outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faregate.evals.replay.engine import Pair
from faregate.evals.replay.online import Mode, PriorCurve
from faregate.evals.replay.outcomes import Outcomes


@dataclass(slots=True)
class Prepared:
    outcomes: Outcomes
    prior: np.ndarray
    vectors: np.ndarray
    pair: Pair
    reference_scores: list[float]
    mode: Mode
    note: str
    curve: PriorCurve | None


def prepare(spec: str, outcomes: Outcomes, *, held_out_only: bool, cache_dir: Path | None) -> Prepared:
    """The stream and its prior scores from `router:FILE` or `judge:FILE`."""
    from faregate.embedding.vector_cache import embed_texts
    from faregate.evals.replay.cascade import require_cheap_answers
    from faregate.evals.replay.router_eval import held_out, judge_scores
    from faregate.learning.cascade_judges import MATH_CHECKS, LearnedJudge, RuleJudge
    from faregate.learning.complexity_router import KIND, ComplexityRouter
    from faregate.learning.model_file import load_model_file
    from faregate.learning.text_features import PROMPT_NAMES

    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("router", "judge"):
        raise ValueError("--online needs --policy router:FILE (a trained router) or judge:FILE (a cascade)")
    file = load_model_file(path, KIND, PROMPT_NAMES) if kind == "router" else LearnedJudge.read(path)
    stream = held_out(outcomes, file).test if held_out_only else outcomes
    if not stream.records:
        # A header-only file, or every prompt contaminated: no stream, and no curve to sweep.
        raise ValueError(f"{outcomes.name}: no prompts to replay")
    pair = Pair(file.strong, file.weak)
    stream.require(pair.strong, pair.weak)
    if kind == "judge":
        # The judge reads the cheap model's recorded answers: correctness alone (MMLU) cannot replay it.
        require_cheap_answers(stream, pair.weak)
    texts = [r.prompt for r in stream.records]
    vectors = embed_texts(texts, cache_dir)
    if kind == "router":
        router = ComplexityRouter(file)
        prior = router.score_vectors(texts, vectors)
        router.close()
        mode: Mode = "router"
    else:
        rules = RuleJudge(MATH_CHECKS)
        refused = np.array(
            [not rules.verdict({}, r.responses[pair.weak], None).accepted for r in stream.records],
            dtype=float,
        )
        # Rules first: an answer a rule refuses ranks above any the learned judge doubts.
        prior = judge_scores(file, stream.records, pair, cache_dir) + refused
        mode = "cascade"
    accuracy = file.training.get("strong_accuracy_train")
    curve = PriorCurve(tuple(file.calibration), float(accuracy)) if file.calibration and accuracy else None
    where = "held-out prompts the file never saw" if held_out_only else "all prompts (some trained on)"
    return Prepared(
        stream, prior, vectors, pair, list(file.reference_scores), mode, f"{len(stream):,} {where}", curve
    )
