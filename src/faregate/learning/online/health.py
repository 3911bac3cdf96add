"""Is the router earning its keep? A check of its live ranking against random and the length baseline.

A router is worth its scoring only if the prompts it ranks high are the ones where the strong
model's answer is better. On verified outcomes (a uniform sample, so unbiased), the ranking's
worth is the covariance between rank and net gain: E[net_gain * (rank - 1/2)]. A random ranking
scores 0 in expectation; a ranking by prompt length scores whatever length is worth here. Per
verified outcome the router's margin over a baseline is d = net_gain * (rank_router - rank_baseline);
the router is flagged when the upper confidence bound of mean(d) (normal approximation) is at or
below zero for either baseline: the evidence then says it is no better, and the route should fall
back to the baseline policy (the length heuristic, or the strong model). Until `min_outcomes` are
verified nothing is flagged.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scipy.special import ndtri

DEFAULT_WINDOW = 2000


@dataclass(slots=True)
class HealthState:
    # (net gain, router rank, length rank) of each verified outcome.
    rows: deque[tuple[int, float, float]] = field(default_factory=lambda: deque(maxlen=DEFAULT_WINDOW))

    def add(self, net_gain: int, router_rank: float, length_rank: float) -> None:
        self.rows.append((net_gain, router_rank, length_rank))

    def to_json(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "window": self.rows.maxlen}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HealthState:
        rows = deque(((int(g), float(r), float(b)) for g, r, b in data["rows"]), maxlen=int(data["window"]))
        return cls(rows)


@dataclass(slots=True, frozen=True)
class Margin:
    baseline: str
    mean: float
    upper: float
    outcomes: int


@dataclass(slots=True, frozen=True)
class Verdict:
    flagged: bool
    reason: str
    margins: tuple[Margin, ...]


@dataclass(slots=True, frozen=True)
class RouterHealth:
    confidence: float = 0.95
    min_outcomes: int = 100

    def margins(self, state: HealthState) -> tuple[Margin, ...]:
        z = float(ndtri(self.confidence))
        out = []
        for name, column in (("random", None), ("length", 2)):
            values = [g * (r - (0.5 if column is None else b)) for g, r, b in state.rows]
            n = len(values)
            mean = sum(values) / n if n else 0.0
            var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.inf
            out.append(Margin(name, mean, mean + z * math.sqrt(var / n) if n > 1 else math.inf, n))
        return tuple(out)

    def verdict(self, state: HealthState) -> Verdict:
        margins = self.margins(state)
        if len(state.rows) < self.min_outcomes:
            seen = f"{len(state.rows)} verified outcomes, fewer than {self.min_outcomes}"
            return Verdict(False, seen, margins)
        worse = [m.baseline for m in margins if m.upper <= 0.0]
        if worse:
            return Verdict(True, f"no better than {' or '.join(worse)} on live evidence", margins)
        return Verdict(False, "not shown worse than random or length", margins)
