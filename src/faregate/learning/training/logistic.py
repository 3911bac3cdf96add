"""L2-regularised logistic regression in NumPy, with the penalty chosen by (grouped) cross-validation.

Newton's method on standardised features: with a few hundred features the Hessian is small, each
step is one matrix product, and a dozen steps converge to machine precision, so fits are exact and
repeatable (no learning rate, no random init). The bias is not penalised. Cross-validation folds
can be groups (MMLU subjects): the router must work on subjects it never saw, so the penalty is
chosen on subjects held out of the fit, not on shuffled rows of the same subjects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from faregate.learning.linear import Array, LinearModel, sigmoid

Metric = Callable[[Array, npt.NDArray[np.int64]], float]  # (scores, fold row indices) -> higher is better

# Penalties tried, on standardised features (so comparable across feature sets).
DEFAULT_L2_GRID: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
MAX_STEPS = 50
# Added to the Hessian's diagonal only (not the loss), so the unpenalised bias keeps it invertible;
# the optimum (gradient zero) is unchanged.
HESSIAN_RIDGE = 1e-6


def standardise(x: Array) -> tuple[Array, Array]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # Constant columns (a marker absent from the training data) get scale 1: they contribute nothing.
    scale[scale < 1e-9] = 1.0
    return mean, scale


def fit_logistic(
    x: Array, y: Array, l2: float, weight: Array | None = None, penalty_scale: Array | None = None
) -> LinearModel:
    """Minimise sum_i w_i * logloss_i + l2/2 * sum_j s_j * weights_j^2 on standardised x.

    `penalty_scale` (s_j, default 1) penalises blocks differently: 384 embedding dimensions would
    otherwise drown a dozen strong hand-made features under one shared penalty."""
    mean, scale = standardise(x)
    z = (x - mean) / scale
    n, d = z.shape
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    design = np.hstack([z, np.ones((n, 1))])
    penalty = np.zeros(d + 1)
    penalty[:-1] = l2 * (np.ones(d) if penalty_scale is None else penalty_scale)
    # Start from the base rate: the first Newton step is then small and well-conditioned.
    rate = float(np.clip((w * y).sum() / w.sum(), 1e-6, 1 - 1e-6))
    beta = np.zeros(d + 1)
    beta[-1] = np.log(rate / (1 - rate))
    loss = _loss(design, y, w, beta, penalty)
    for _ in range(MAX_STEPS):
        p = sigmoid(design @ beta)
        gradient = design.T @ (w * (p - y)) + penalty * beta
        step = _newton_step(design, w * p * (1 - p), penalty + HESSIAN_RIDGE, gradient)
        # Halve the step until the loss does not rise (rarely needed with a penalty); a step that
        # cannot lower it at all means the optimum is reached to rounding.
        for halving in range(15):
            candidate = beta - step / 2**halving
            new_loss = _loss(design, y, w, candidate, penalty)
            if new_loss <= loss + 1e-12:
                break
        else:
            break
        beta, previous, loss = candidate, loss, new_loss
        if previous - loss < 1e-10 * max(1.0, abs(loss)):
            break
    return LinearModel(mean, scale, beta[:-1].copy(), float(beta[-1]), l2)


def _newton_step(design: Array, curvature: Array, ridge: Array, gradient: Array) -> Array:
    """Solve (Dᵀ S D + Λ) step = gradient, in whichever space is smaller.

    With more columns than rows (a judge's 800 features on ~500 answers) the Woodbury identity
    turns the (d x d) solve into an (n x n) one:
    H⁻¹ g = Λ⁻¹g − Λ⁻¹Dᵀ S^½ (I + S^½ D Λ⁻¹ Dᵀ S^½)⁻¹ S^½ D Λ⁻¹ g."""
    n, columns = design.shape
    if columns <= n:
        hessian = (design * curvature[:, None]).T @ design + np.diag(ridge)
        primal: Array = np.asarray(np.linalg.solve(hessian, gradient), dtype=np.float64)
        return primal
    root = np.sqrt(curvature)
    scaled = design * root[:, None]  # S^½ D
    inverse = 1.0 / ridge  # Λ⁻¹
    inner = np.eye(n) + (scaled * inverse) @ scaled.T
    projected = scaled @ (inverse * gradient)
    dual: Array = inverse * gradient - inverse * (scaled.T @ np.linalg.solve(inner, projected))
    return dual


def _loss(design: Array, y: Array, w: Array, beta: Array, penalty: Array) -> float:
    z = design @ beta
    # log(1 + e^z) - y z, stably.
    losses = np.logaddexp(0.0, z) - y * z
    return float((w * losses).sum() + 0.5 * (penalty * beta * beta).sum())


def folds_by_group(groups: Sequence[str], k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    """k folds of row indices, each a set of whole groups (groups shuffled with the seed)."""
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[int(i)]: j % k for j, i in enumerate(order)}
    labels = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(labels == j).astype(np.int64) for j in range(min(k, len(names)))]


def folds_by_row(n: int, k: int, seed: int) -> list[npt.NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[j::k]).astype(np.int64) for j in range(k)]


@dataclass(slots=True, frozen=True)
class CvResult:
    l2: float
    scores: dict[float, float]  # mean fold metric per penalty
    out_of_fold: Array  # each row's score from the fit that did not see it, at the chosen penalty


def cross_validate(
    x: Array,
    y: Array,
    folds: Sequence[npt.NDArray[np.int64]],
    metric: Metric,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    weight: Array | None = None,
    penalty_scale: Array | None = None,
) -> CvResult:
    """Choose the penalty whose held-out folds score best on `metric` (mean over folds)."""
    n = len(y)
    predictions = {l2: np.zeros(n) for l2 in grid}
    means: dict[float, float] = {}
    for l2 in grid:
        fold_scores = []
        for held in folds:
            train = np.setdiff1d(np.arange(n), held)
            model = fit_logistic(
                x[train], y[train], l2, None if weight is None else weight[train], penalty_scale
            )
            predictions[l2][held] = model.predict(x[held])
            fold_scores.append(metric(predictions[l2][held], held))
        means[l2] = float(np.mean(fold_scores))
    best = max(grid, key=lambda l2: (means[l2], l2))  # ties: the stronger penalty
    return CvResult(best, means, predictions[best])
