"""Where a learned score turns into a decision: a threshold set directly, by a target share, or by quality.

Used by the complexity router (score >= threshold -> strong model) and the cascade's learned judge
(escalation score >= threshold -> ask the next model). Three ways to set it:

- directly: a fixed number;
- a target share of the positive decision (e.g. 30% of calls to the strong model): the threshold is
  the (1 - share) quantile of recent scores, kept in a bounded window and recomputed every few
  scores, so it follows a drifting traffic mix. Until the window has enough scores it starts from
  the score distribution recorded at training time;
- a target quality from replay: the model file's calibration curve (measured on held-out folds of
  the training data) says which share keeps e.g. 95% of the strong model's accuracy; that share
  is then held as above.

State changes happen on the caller's thread (the event loop); scoring runs elsewhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 2000
DEFAULT_REFRESH = 64
DEFAULT_MIN_SAMPLES = 200


@dataclass(slots=True, frozen=True)
class CalibrationPoint:
    """On held-out training folds: sending this share the positive way kept this share of the
    strong model's accuracy (`retained`), i.e. this PGR."""

    share: float
    retained: float
    pgr: float


def share_for_quality(curve: Sequence[CalibrationPoint], retain: float) -> float:
    """The least share whose calibrated quality reaches `retain`; 1.0 when none does."""
    if not 0.0 < retain <= 1.5:
        raise ValueError(f"target quality must be a fraction of the strong model's accuracy, got {retain}")
    for point in sorted(curve, key=lambda p: p.share):
        if point.retained >= retain - 1e-12:
            return point.share
    return 1.0


class Threshold:
    """Decides `score >= value`; the value is fixed, or follows a target share of recent scores."""

    def __init__(
        self,
        *,
        value: float | None = None,
        share: float | None = None,
        reference: Sequence[float] = (),
        window: int = DEFAULT_WINDOW,
        refresh_every: int = DEFAULT_REFRESH,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        if (value is None) == (share is None):
            raise ValueError("give exactly one of a threshold value or a target share")
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"target share must be within [0, 1], got {share}")
        if window < 1 or refresh_every < 1:
            raise ValueError("window and refresh_every must be positive")
        self.share = share
        self._recent: deque[float] = deque(maxlen=window)
        self._refresh_every = refresh_every
        self._min_samples = min(min_samples, window)
        self._since_refresh = 0
        # Quantiles of the training-time scores: the threshold before live traffic fills the window.
        self._reference = np.sort(np.asarray(reference, dtype=np.float64))
        # With no history at all, everything goes the positive way until scores arrive (the safe side).
        self._value = float(value) if value is not None else self._quantile(self._reference)

    @classmethod
    def fixed(cls, value: float) -> Threshold:
        return cls(value=value)

    @property
    def value(self) -> float:
        return self._value

    @property
    def samples(self) -> int:
        return len(self._recent)

    def decide(self, score: float) -> bool:
        """True: the positive decision (strong model / escalate). Records the score for share mode."""
        self.observe(score)
        return score >= self._value

    def observe(self, score: float) -> None:
        if self.share is None:
            return
        self._recent.append(float(score))
        self._since_refresh += 1
        if self._since_refresh >= self._refresh_every and len(self._recent) >= self._min_samples:
            self._since_refresh = 0
            self._value = self._quantile(np.fromiter(self._recent, dtype=np.float64))

    def _quantile(self, scores: np.ndarray) -> float:
        assert self.share is not None
        if self.share <= 0.0:
            return np.inf
        if self.share >= 1.0 or not scores.size:
            return -np.inf
        # score >= q(1 - share) sends about `share` of these scores the positive way.
        return float(np.quantile(scores, 1.0 - self.share, method="higher"))
