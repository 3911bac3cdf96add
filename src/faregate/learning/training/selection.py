"""Training the complexity router and the cascade judge on recorded outcomes, honestly.

- Splits are fixed by a seed and recorded in the model file: MMLU by subject (train on some
  subjects, test on the others), GSM8K by question. `faregate router eval` re-derives the held-out
  part from the file, so a model is never scored on what it was trained on.
- Hyperparameters (the L2 penalty, and how much harder the 384 embedding dimensions are penalised
  than the hand-made features) are chosen by cross-validation inside the training part only, on
  the metric that matters, APGR, computed by the replay engine. Grouped data (subjects) is
  cross-validated by group: the router must work on subjects it never saw. Folds are halves,
  repeated with several seeds: a fold of a few subjects gives an APGR too noisy to choose by.
- The calibration curve stored in the file (strong-call share -> accuracy kept) comes from those
  held-out folds, not from the training fit, so a "keep 95%" target is not flattered by overfitting.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from faregate.evals.replay.engine import DEFAULT_PRICES, Pair, sweep
from faregate.evals.replay.outcomes import Outcomes, PromptRecord, subjects
from faregate.learning.linear import Array, LinearModel
from faregate.learning.thresholds import CalibrationPoint
from faregate.learning.training.logistic import fit_logistic, folds_by_group, folds_by_row, standardise

SplitBy = Literal["source", "row"]
Indices = npt.NDArray[np.int64]

DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.5
L2_GRID: tuple[float, ...] = (10.0, 30.0, 100.0, 300.0, 1000.0)
# Embedding penalty relative to the hand-made features' (1: one shared penalty).
EMBEDDING_PENALTY_GRID: tuple[float, ...] = (1.0, 10.0, 100.0)
CALIBRATION_STEPS = 100
REFERENCE_QUANTILES = 101


# -- splits ---------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SplitSpec:
    by: SplitBy
    test_fraction: float
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "test_fraction": self.test_fraction, "seed": self.seed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitSpec:
        by = data["by"]
        if by not in ("source", "row"):
            raise ValueError(f"unknown split kind {by!r}")
        return cls(by, float(data["test_fraction"]), int(data["seed"]))


@dataclass(slots=True)
class Split:
    spec: SplitSpec
    train: Outcomes
    test: Outcomes
    test_sources: list[str]

    def describe(self) -> dict[str, Any]:
        return {
            **self.spec.to_json(),
            "train_prompts": len(self.train),
            "test_prompts": len(self.test),
            "train_sources": sorted({r.source for r in self.train.records}),
            "test_sources": self.test_sources,
            "train_digest": prompts_digest(self.train.records),
            "test_digest": prompts_digest(self.test.records),
        }


def prompts_digest(records: Sequence[PromptRecord]) -> str:
    digest = hashlib.sha256()
    for prompt in sorted(r.prompt for r in records):
        digest.update(prompt.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def default_split_by(outcomes: Outcomes) -> SplitBy:
    """Several source files (MMLU subjects): hold out whole subjects; one file: hold out rows."""
    return "source" if len(subjects(outcomes)) > 1 else "row"


def split_outcomes(outcomes: Outcomes, spec: SplitSpec) -> Split:
    if not 0.0 < spec.test_fraction < 1.0:
        raise ValueError(f"test fraction must be within (0, 1), got {spec.test_fraction}")
    rng = np.random.default_rng(spec.seed)
    if spec.by == "source":
        names = sorted(subjects(outcomes))
        if len(names) < 2:
            raise ValueError(f"{outcomes.name}: one source file; split by row instead")
        count = min(len(names) - 1, max(1, round(len(names) * spec.test_fraction)))
        held = sorted(names[int(i)] for i in rng.permutation(len(names))[:count])
        test_mask = [r.source in set(held) for r in outcomes.records]
    else:
        n = len(outcomes.records)
        count = min(n - 1, max(1, round(n * spec.test_fraction)))
        chosen = set(rng.permutation(n)[:count].tolist())
        test_mask = [i in chosen for i in range(n)]
        held = []

    def part(keep: bool) -> Outcomes:
        records = [r for r, t in zip(outcomes.records, test_mask, strict=True) if t == keep]
        return Outcomes(outcomes.name, outcomes.models, records, outcomes.contaminated_skipped)

    return Split(spec, part(False), part(True), held)


# -- cross-validated selection --------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Candidate:
    """One hyperparameter setting: the L2 penalty and per-column penalty multipliers."""

    name: str
    l2: float
    penalty_scale: Array | None = None
    columns: Indices | None = None  # a subset of the feature columns (None: all)
    # Blend: a model on `columns` whose logit is averaged, standardised, with this one column's
    # standardised value (see fit_blend); the result scores every column of x.
    blend_column: int | None = None
    # Within groups: the model on `columns` sees them with the training groups' centroid directions
    # projected out (see fit_within_groups); the result scores every column of x.
    within_groups: bool = False

    def view(self, x: Array) -> Array:
        if self.columns is None or self.blend_column is not None or self.within_groups:
            return x
        return x[:, self.columns]

    def fit(self, x: Array, y: Array, groups: Sequence[str] = ()) -> LinearModel:
        """The model on x's rows (their groups: source files), to score `view(x)` rows with."""
        if self.blend_column is not None:
            return fit_blend(x, y, self)
        if self.within_groups:
            return fit_within_groups(x, y, groups, self)
        return fit_logistic(self.view(x), y, self.l2, penalty_scale=self.penalty_scale)


def _full_model(x: Array, raw: Array, intercept: float, l2: float) -> LinearModel:
    """Raw-space coefficients over every column of x as a standardised LinearModel (same scores)."""
    mean, scale = standardise(x)
    return LinearModel(mean, scale, raw * scale, intercept + float(raw @ mean), l2)


def fit_within_groups(x: Array, y: Array, groups: Sequence[str], candidate: Candidate) -> LinearModel:
    """A logistic model on the embedding with the training groups' (subjects') centroid directions
    projected out: it can use what tells questions apart *within* a subject, not which subject a
    question resembles, which is what failed on subjects never seen (a new subject's nearest
    training subject says little about how it splits the two models). The projection is a fixed
    linear map fitted at training time, so the deployed model is one plain linear model and needs
    no subject at run time. Across 30 random MMLU subject splits it held up as well as any other
    candidate and kept the embedding's low cost (bench/router_generalisation.py)."""
    if candidate.columns is None or len(groups) != len(y):
        raise ValueError("a within-group model needs its columns and every training row's group")
    columns = candidate.columns
    e = x[:, columns]
    labels = np.asarray(groups)
    centroids = np.stack([e[labels == g].mean(axis=0) for g in sorted(set(groups))]) - e.mean(axis=0)
    _, singular, directions = np.linalg.svd(centroids, full_matrices=False)
    basis = directions[singular > max(1e-9 * float(singular[0]), 1e-12)]
    projected = e - (e @ basis.T) @ basis
    base = fit_logistic(projected, y, candidate.l2)
    per_unit = base.weights / base.scale
    raw = np.zeros(x.shape[1])
    raw[columns] = per_unit - basis.T @ (basis @ per_unit)  # P w: the projection is symmetric
    return _full_model(x, raw, base.bias - float(base.mean @ per_unit), candidate.l2)


BLEND_WEIGHT = 0.5


def fit_blend(x: Array, y: Array, candidate: Candidate) -> LinearModel:
    """Equal-weight average of two standardised scores, as one linear model over every column of x:
    the logit of a logistic model on `candidate.columns` (the embedding) and one cheap feature
    (log_chars). Across random MMLU subject splits it had the best APGR tail of any candidate
    (bench/router_generalisation.py), but it keeps the long, expensive prompts on the strong model:
    keeping 95% cost more than random routing, so the MMLU file is the within-subject model. A 1-D
    logistic fit on the training rows maps the blend to a probability of the target, so the score
    still reads as P(only the strong model is right)."""
    if candidate.columns is None or candidate.blend_column is None:
        raise ValueError("a blend needs the columns of its model and the column it blends with")
    columns, extra = candidate.columns, candidate.blend_column
    base = fit_logistic(x[:, columns], y, candidate.l2)
    # Every linear piece as raw-space coefficients over all of x's columns, plus an intercept.
    raw = np.zeros(x.shape[1])
    raw[columns] = base.weights / base.scale
    intercept = base.bias - float(base.mean @ (base.weights / base.scale))
    logit = x @ raw + intercept
    feature = x[:, extra]
    spread_logit, spread_feature = max(float(logit.std()), 1e-9), max(float(feature.std()), 1e-9)
    coefficients = BLEND_WEIGHT * raw / spread_logit
    coefficients[extra] += (1.0 - BLEND_WEIGHT) / spread_feature
    offset = BLEND_WEIGHT * (intercept - float(logit.mean())) / spread_logit
    offset -= (1.0 - BLEND_WEIGHT) * float(feature.mean()) / spread_feature
    blend = x @ coefficients + offset
    link = fit_logistic(blend[:, None], y, 1e-6)
    slope = float(link.weights[0] / link.scale[0])
    bias = link.bias - float(link.mean[0]) * slope
    return _full_model(x, slope * coefficients, slope * offset + bias, candidate.l2)


@dataclass(slots=True)
class Selection:
    best: Candidate
    # Mean and standard error of the held-out-fold APGR per candidate name.
    table: dict[str, tuple[float, float]]
    calibration: list[CalibrationPoint]
    folds: int
    repeats: int


def fold_sets(records: Sequence[PromptRecord], grouped: bool, repeats: int, seed: int) -> list[list[Indices]]:
    """Per repeat, the folds (row indices): halves of the groups, or five folds of rows."""
    if grouped:
        groups = [r.source for r in records]
        return [folds_by_group(groups, 2, seed + 1 + k) for k in range(repeats)]
    return [folds_by_row(len(records), 5, seed + 1 + k) for k in range(repeats)]


def replay_apgr(records: Sequence[PromptRecord], scores: Array, pair: Pair) -> float:
    """APGR of a score on some records, by the replay engine (RouteLLM's quantile sweep)."""
    by_id = {id(r): float(s) for r, s in zip(records, scores, strict=True)}
    part = Outcomes("cv", tuple(pair_models(pair)), list(records))
    return sweep(part, lambda r: by_id[id(r)], pair, DEFAULT_PRICES, "cv").metrics.apgr


def pair_models(pair: Pair) -> list[str]:
    return [pair.strong, pair.weak]


def select(
    x: Array,
    y: Array,
    records: Sequence[PromptRecord],
    pair: Pair,
    candidates: Sequence[Candidate],
    folds: Sequence[Sequence[Indices]],
    progress: Callable[[str], None] | None = None,
) -> Selection:
    """Fit every candidate on each fold's complement and score its held-out folds by APGR; keep the
    first candidate (list simpler and more penalised ones first) within one standard error of the
    best mean (Breiman's one-standard-error rule: differences smaller than the folds' noise do not
    justify a more complex model)."""
    n = len(records)
    strong = np.array([r.correct[pair.strong] for r in records], dtype=np.float64)
    weak = np.array([r.correct[pair.weak] for r in records], dtype=np.float64)
    table: dict[str, tuple[float, float]] = {}
    ranked: dict[str, list[tuple[Indices, Array]]] = {}
    for candidate in candidates:
        scores: list[float] = []
        held_out: list[tuple[Indices, Array]] = []
        for repeat in folds:
            for held in repeat:
                train = np.setdiff1d(np.arange(n), held)
                view = candidate.view(x)
                groups = [records[int(i)].source for i in train]
                predicted = candidate.fit(x[train], y[train], groups).predict(view[held])
                held_out.append((held, predicted))
                if strong[held].mean() != weak[held].mean():
                    scores.append(replay_apgr([records[int(i)] for i in held], predicted, pair))
        mean = float(np.mean(scores)) if scores else float("nan")
        error = float(np.std(scores) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
        table[candidate.name] = (mean, error)
        ranked[candidate.name] = held_out
        if progress is not None:
            progress(f"{candidate.name}: held-out APGR {mean:.3f} ± {error:.3f}")
    best = one_standard_error(candidates, table)
    calibration = calibrate(ranked[best.name], strong, weak, len(folds))
    return Selection(best, table, calibration, len(folds[0]) if folds else 0, len(folds))


def one_standard_error(candidates: Sequence[Candidate], table: dict[str, tuple[float, float]]) -> Candidate:
    scored = [c for c in candidates if not math.isnan(table[c.name][0])]
    if not scored:
        raise ValueError("no fold had both models differ in accuracy; cannot choose a model")
    top = max(scored, key=lambda c: table[c.name][0])
    bar = table[top.name][0] - table[top.name][1]
    return next(c for c in scored if table[c.name][0] >= bar)


def calibrate(
    held_out: Sequence[tuple[Indices, Array]], strong: Array, weak: Array, repeats: int
) -> list[CalibrationPoint]:
    """Accuracy kept at each strong-call share, sending each held-out fold's top-scored prompts first.

    Shares are taken within each fold (its own model's scores are only comparable to each other),
    summed over a repeat's folds, and averaged over repeats."""
    n = len(strong)
    strong_acc, weak_acc = strong.mean(), weak.mean()
    shares = np.linspace(0.0, 1.0, CALIBRATION_STEPS + 1)
    correct = np.zeros_like(shares)
    for held, scores in held_out:
        order = held[np.argsort(-scores, kind="stable")]
        gains = np.concatenate(([0.0], np.cumsum(strong[order] - weak[order])))
        taken = np.ceil(shares * len(held) - 1e-9).astype(np.int64)
        correct += weak[held].sum() + gains[taken]
    accuracy = correct / repeats / n
    gap = strong_acc - weak_acc
    return [
        CalibrationPoint(
            share=float(s),
            retained=float(a / strong_acc) if strong_acc else 0.0,
            pgr=float((a - weak_acc) / gap) if gap else 0.0,
        )
        for s, a in zip(shares, accuracy, strict=True)
    ]


@dataclass(slots=True, frozen=True)
class Grid:
    """The hyperparameters cross-validation chooses among."""

    l2: tuple[float, ...] = L2_GRID
    embedding_penalty: tuple[float, ...] = EMBEDDING_PENALTY_GRID


def block_candidates(
    embedding_columns: int, text_columns: int, *, with_text_only: bool = False, grid: Grid | None = None
) -> list[Candidate]:
    """The grid, simplest first: text features alone (if asked), then embedding + text with the
    embedding penalised 100x, 10x, 1x the text features'; within each, the strongest penalty first."""
    grid = grid or Grid()
    out: list[Candidate] = []
    penalties = sorted(grid.l2, reverse=True)
    if with_text_only:
        text = np.arange(embedding_columns, embedding_columns + text_columns, dtype=np.int64)
        out += [Candidate(f"text only, l2={l2:g}", l2, columns=text) for l2 in penalties]
    for multiplier in sorted(grid.embedding_penalty, reverse=True):
        scale = np.concatenate([np.full(embedding_columns, multiplier), np.ones(text_columns)])
        out += [
            Candidate(f"embedding x{multiplier:g} penalty, l2={l2:g}", l2, penalty_scale=scale)
            for l2 in penalties
        ]
    return out


BLEND_L2_GRID: tuple[float, ...] = (100.0, 300.0, 1000.0)


def blend_candidates(
    embedding_columns: int, blend_column: int, *, grid: Grid | None = None
) -> list[Candidate]:
    """The embedding alone (no hand-made features), blended with one feature; strongest penalty first."""
    penalties = sorted(grid.l2 if grid else BLEND_L2_GRID, reverse=True)
    embedding = np.arange(embedding_columns, dtype=np.int64)
    return [
        Candidate(
            f"embedding l2={l2:g}, blended with length", l2, columns=embedding, blend_column=blend_column
        )
        for l2 in penalties
    ]


WITHIN_L2_GRID: tuple[float, ...] = (300.0, 1000.0)


def within_group_candidates(embedding_columns: int, *, grid: Grid | None = None) -> list[Candidate]:
    """The embedding alone, subject directions projected out; strongest penalty first."""
    penalties = sorted(grid.l2 if grid else WITHIN_L2_GRID, reverse=True)
    embedding = np.arange(embedding_columns, dtype=np.int64)
    return [
        Candidate(f"embedding within subjects, l2={l2:g}", l2, columns=embedding, within_groups=True)
        for l2 in penalties
    ]


def describe_cv(grouped: bool, repeats: int) -> str:
    if grouped:
        return f"{repeats} repeats of 2-fold cross-validation by subject (whole subjects held out)"
    return f"{repeats} repeats of 5-fold cross-validation by row"


def default_repeats(grouped: bool) -> int:
    # Halves of ~20 subjects give noisy APGRs; more repeats steady the choice (fits are cheap).
    return 8 if grouped else 4


def fit_final(
    x: Array, y: Array, candidate: Candidate, groups: Sequence[str] = ()
) -> tuple[LinearModel, list[float]]:
    """The deployed model (all training rows) and quantiles of its scores on them."""
    model = candidate.fit(x, y, groups)
    scores = model.predict(candidate.view(x))
    return model, [float(q) for q in np.quantile(scores, np.linspace(0.0, 1.0, REFERENCE_QUANTILES))]
