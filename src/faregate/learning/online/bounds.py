"""Exact binomial (Clopper-Pearson) confidence bounds, and the bound on a signed quality loss.

Clopper-Pearson inverts the binomial test, so its coverage is at least the stated confidence for
every n and every true rate (it is conservative, never anti-conservative like Wald or, near 0,
Wilson). Rare events are what the targets bound (a 0.5% wrong-hit rate, a few points of accuracy),
so exactness at small counts matters more than width. The bounds are fixed-sample bounds: a
sequence of them recomputed as evidence grows is not simultaneously valid (see
docs/quality-guarantee.md for what that means here).
"""

from __future__ import annotations

from scipy.special import betaincinv


def upper(successes: int, trials: int, confidence: float) -> float:
    """One-sided upper bound on a binomial rate; 1.0 with no trials."""
    _check(successes, trials, confidence)
    if trials == 0 or successes >= trials:
        return 1.0
    return float(betaincinv(successes + 1, trials - successes, confidence))


def lower(successes: int, trials: int, confidence: float) -> float:
    """One-sided lower bound on a binomial rate; 0.0 with no trials."""
    _check(successes, trials, confidence)
    if successes == 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, 1.0 - confidence))


def loss_upper(losses: int, gains: int, trials: int, confidence: float) -> float:
    """Upper bound on E[loss - gain] per trial, where each trial is a loss (the cheap answer wrong and
    the reference right), a gain (the reverse) or neither: the upper bound of the loss rate minus the
    lower bound of the gain rate, each at half the error (a union bound)."""
    if losses + gains > trials:
        raise ValueError("more losses and gains than trials")
    half = 1.0 - (1.0 - confidence) / 2.0
    return upper(losses, trials, half) - lower(gains, trials, half)


def _check(successes: int, trials: int, confidence: float) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
