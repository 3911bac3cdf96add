"""A standardised linear model with a logistic link: the runtime half of the trained routers and judges.

Training (learning/training/logistic.py) fits it; routing only needs `predict`, a dot product over a
few hundred features, so it is a dozen lines of NumPy and serialises to plain JSON lists. Floats are written
with repr, which round-trips exactly: a loaded model scores bit-for-bit like the trained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def sigmoid(z: Array) -> Array:
    # Split by sign so neither branch overflows exp.
    out = np.empty_like(z, dtype=np.float64)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


@dataclass(slots=True, frozen=True)
class LinearModel:
    """P(y=1 | x) = sigmoid(((x - mean) / scale) . weights + bias)."""

    mean: Array
    scale: Array
    weights: Array
    bias: float
    # The L2 penalty it was fitted with (on standardised features), for the record.
    l2: float = 0.0

    @property
    def dimensions(self) -> int:
        return int(self.weights.shape[0])

    def logit(self, x: Array) -> Array:
        standard = (np.atleast_2d(x) - self.mean) / self.scale
        result: Array = standard @ self.weights + self.bias
        return result

    def predict(self, x: Array) -> Array:
        """Probabilities, one per row of x (a single vector gives one)."""
        return sigmoid(self.logit(x))

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "weights": [float(v) for v in self.weights],
            "bias": float(self.bias),
            "l2": float(self.l2),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearModel:
        mean, scale, weights = (np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "weights"))
        if not (mean.ndim == 1 and mean.shape == scale.shape == weights.shape):
            raise ValueError("linear model: mean, scale and weights must be vectors of one length")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(weights)) and np.all(scale > 0)):
            raise ValueError("linear model: non-finite values or a non-positive scale")
        return cls(mean, scale, weights, float(data["bias"]), float(data.get("l2", 0.0)))
