"""`faregate router train` / `train-judge`: fit a complexity router or a cascade judge on a split.

Router target: 1 where the weak model is wrong and the strong one right ("paying for the strong
model buys a correct answer"), 0 otherwise. On MMLU this beat predicting "weak is wrong" and
predicting strong-minus-weak in cross-validation across subjects: prompts where both fail are
not worth escalating, and the few where the strong model fails alone (GPT-4 scores 3% on the
recorded high-school-mathematics subject, below chance, a recording artefact) teach the
opposite of what holds elsewhere.

Judge target: 1 where the cheap model's recorded answer is wrong; escalating those first is
what a cascade's quality/cost curve rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from faregate import __version__
from faregate.embedding.embedder import DIMENSIONS
from faregate.embedding.vector_cache import BatchEmbedder, embed_texts
from faregate.evals.replay.engine import Pair
from faregate.evals.replay.outcomes import PromptRecord
from faregate.learning import cascade_judges as cascade
from faregate.learning import complexity_router as complexity
from faregate.learning.model_file import EMBEDDING_ID, ModelFile
from faregate.learning.text_features import PROMPT_NAMES
from faregate.learning.training.selection import (
    Grid,
    Selection,
    Split,
    blend_candidates,
    block_candidates,
    default_repeats,
    describe_cv,
    fit_final,
    fold_sets,
    select,
    within_group_candidates,
)

Progress = Callable[[str], None]
# "linear": one logistic model on the embedding and the 19 text features, the embedding penalised
# 1x-100x harder (cross-validation chooses). "within-subject": the embedding alone, the training
# subjects' centroid directions projected out (selection.py fit_within_groups): held up on MMLU
# subjects the router never saw without paying more per kept answer (bench/router_generalisation.py;
# routers/router-mmlu.json). "blend": the embedding's model averaged with prompt length (as
# robust by APGR, but it keeps the long, expensive prompts on the strong model).
RouterModel = Literal["linear", "within-subject", "blend"]
ROUTER_MODELS: tuple[RouterModel, ...] = ("linear", "within-subject", "blend")


@dataclass(slots=True)
class Trained:
    file: ModelFile
    selection: Selection


def _training_record(
    split: Split, pair: Pair, selection: Selection, seed: int, target: str, cv: str
) -> dict[str, Any]:
    best = selection.best
    return {
        "faregate_version": __version__,
        "data": split.train.name,
        "contaminated_prompts_left_out": split.train.contaminated_skipped,
        "seed": seed,
        "split": split.describe(),
        "target": target,
        "cross_validation": cv,
        "chosen": {"name": best.name, "l2": best.l2},
        "cv_apgr": {name: {"mean": m, "stderr": e} for name, (m, e) in selection.table.items()},
        "strong_accuracy_train": split.train.accuracy(pair.strong),
        "weak_accuracy_train": split.train.accuracy(pair.weak),
    }


def _labels(records: list[PromptRecord], pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    strong = np.array([r.correct[pair.strong] for r in records], dtype=np.float64)
    weak = np.array([r.correct[pair.weak] for r in records], dtype=np.float64)
    return strong, weak


def train_router(
    split: Split,
    pair: Pair,
    *,
    seed: int,
    repeats: int | None = None,
    cache_dir: Path | None = None,
    embedder: BatchEmbedder | None = None,
    grid: Grid | None = None,
    progress: Progress | None = None,
    model_kind: RouterModel = "linear",
) -> Trained:
    records = split.train.records
    texts = [r.prompt for r in records]
    if progress:
        progress(f"embedding {len(texts):,} training prompts (cached on disk after the first run)")
    x = complexity.prompt_matrix(texts, embed_texts(texts, cache_dir, embedder=embedder))
    strong, weak = _labels(records, pair)
    y = strong * (1.0 - weak)
    grouped = split.spec.by == "source"
    repeats = repeats or default_repeats(grouped)
    folds = fold_sets(records, grouped, repeats, seed)
    if model_kind == "blend":
        candidates = blend_candidates(DIMENSIONS, DIMENSIONS + PROMPT_NAMES.index("log_chars"), grid=grid)
    elif model_kind == "within-subject":
        candidates = within_group_candidates(DIMENSIONS, grid=grid)
    else:
        candidates = block_candidates(DIMENSIONS, len(PROMPT_NAMES), grid=grid)
    selection = select(x, y, records, pair, candidates, folds, progress)
    model, reference = fit_final(x, y, selection.best, [r.source for r in records])
    cv = describe_cv(grouped, repeats)
    file = ModelFile(
        kind=complexity.KIND,
        text_features=PROMPT_NAMES,
        embedding=EMBEDDING_ID,
        embedded=("prompt",),
        model=model,
        strong=pair.strong,
        weak=pair.weak,
        calibration=selection.calibration,
        reference_scores=reference,
        training={
            **_training_record(
                split, pair, selection, seed, "weak wrong and strong right (P(routing to strong pays))", cv
            ),
            "model": model_kind,
        },
    )
    return Trained(file, selection)


def weak_answers(records: list[PromptRecord], pair: Pair) -> list[str]:
    missing = sum(pair.weak not in r.responses for r in records)
    if missing:
        raise ValueError(
            f"{missing} prompts have no recorded answer from {pair.weak} (a {pair.weak}_response column); "
            "a cascade judge learns from the cheap model's actual answers"
        )
    return [r.responses[pair.weak] for r in records]


def train_judge(
    split: Split,
    pair: Pair,
    *,
    seed: int,
    repeats: int | None = None,
    cache_dir: Path | None = None,
    embedder: BatchEmbedder | None = None,
    grid: Grid | None = None,
    progress: Progress | None = None,
) -> Trained:
    records = split.train.records
    questions = [r.prompt for r in records]
    answers = weak_answers(records, pair)
    if progress:
        progress(f"embedding {len(questions):,} training questions and answers (cached after the first run)")
    vectors = [
        embed_texts(questions, cache_dir, embedder=embedder),
        embed_texts(answers, cache_dir, embedder=embedder),
    ]
    # The recorded data has no finish_reason; truncation shows in the text (an unclosed calculation).
    x = cascade.judge_matrix(questions, answers, [None] * len(records), vectors)
    _, weak = _labels(records, pair)
    y = 1.0 - weak
    grouped = split.spec.by == "source"
    repeats = repeats or default_repeats(grouped)
    folds = fold_sets(records, grouped, repeats, seed)
    candidates = block_candidates(2 * DIMENSIONS, len(cascade.JUDGE_FEATURES), with_text_only=True, grid=grid)
    selection = select(x, y, records, pair, candidates, folds, progress)
    model, reference = fit_final(x, y, selection.best)
    text_only = selection.best.columns is not None
    file = ModelFile(
        kind=cascade.KIND,
        text_features=cascade.JUDGE_FEATURES,
        embedding=None if text_only else EMBEDDING_ID,
        embedded=() if text_only else ("question", "answer"),
        model=model,
        strong=pair.strong,
        weak=pair.weak,
        calibration=selection.calibration,
        reference_scores=reference,
        training=_training_record(
            split,
            pair,
            selection,
            seed,
            f"{pair.weak}'s recorded answer is wrong (P(escalating pays))",
            describe_cv(grouped, repeats),
        ),
    )
    return Trained(file, selection)
