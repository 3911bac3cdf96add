"""The offline model's calibration curve as a prior worth N pseudo-outcomes.

A trained router or cascade-judge file carries `calibration`: the share of the strong model's
accuracy kept at each strong-call share, measured on held-out folds of its training data
(learning/model_file.py), and the strong model's training accuracy. From them the prior's loss at
a cheap share c is L(c) = strong_accuracy * (1 - retained(1 - c)). `pseudo_outcomes` turns that
curve into N labelled decisions (probability 1) at evenly spread ranks whose outcomes follow it:
the running count of losses below any rank tracks N * L(rank) to within one outcome, a loss where
the curve rises, a gain where it falls, and the strong answer acceptable in a share equal to the
training accuracy. Fed to the calibrator before live traffic (in a fixed shuffled order, as if
they had arrived at random), they give a fresh deployment the evidence the training data gave the
model; live decisions then add to it, and after a few N live labels they dominate.

What it costs: with a prior, the calibrator's guarantee holds for the traffic the prior describes
mixed with the live traffic, not for the live traffic alone; where the deployment's traffic is
unlike the training data, the first decisions rest on the prior's word. The pseudo-outcomes carry
only the net curve (no offsetting loss/gain pairs), so they are slightly less noisy than N real
labels would be: N counts as a little more evidence than N live labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from faregate.learning.online.calibrator import LabelledDecision
from faregate.learning.thresholds import CalibrationPoint


def prior_loss(curve: Sequence[CalibrationPoint], strong_accuracy: float, cheap_share: float) -> float:
    """The loss per request the curve predicts when a share `cheap_share` takes the cheap path."""
    if not curve:
        raise ValueError("the model file has no calibration curve")
    shares = np.array([p.share for p in curve])
    retained = np.array([p.retained for p in curve])
    order = np.argsort(shares)
    kept = float(np.interp(1.0 - cheap_share, shares[order], retained[order]))
    return strong_accuracy * (1.0 - kept)


def pseudo_outcomes(
    curve: Sequence[CalibrationPoint], strong_accuracy: float, count: int, seed: int = 0
) -> list[LabelledDecision]:
    """`count` labelled decisions that follow the curve, in a seeded random arrival order."""
    if count <= 0:
        return []
    if not 0.0 < strong_accuracy <= 1.0:
        raise ValueError(f"strong accuracy must be in (0, 1], got {strong_accuracy}")
    ranks = (np.arange(count) + 0.5) / count
    nets: list[int] = []
    running = 0
    for j in range(count):
        target = count * prior_loss(curve, strong_accuracy, (j + 1) / count)
        step = int(np.clip(round(target - running), -1, 1))
        nets.append(step)
        running += step
    # The strong answer is acceptable on every loss, never on a gain, and on enough of the rest
    # (spread evenly over ranks) to match its training accuracy.
    neutral = [j for j, n in enumerate(nets) if n == 0]
    wanted = min(round(count * strong_accuracy) - nets.count(1), len(neutral))
    chosen = set(neutral[int(k * len(neutral) / wanted)] for k in range(wanted)) if wanted > 0 else set()
    decisions = [
        LabelledDecision(float(ranks[j]), nets[j] == 1, nets[j] == -1, nets[j] == 1 or j in chosen, 1.0)
        for j in range(count)
    ]
    order = np.random.default_rng(seed).permutation(count)
    return [decisions[int(i)] for i in order]
