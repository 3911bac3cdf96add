"""The coin that draws a decision into the verification sample, and the daily USD cap on it.

The coin is a hash of (seed, decision key), not a random draw: every gateway instance makes the
same choice for the same request id, a replay is repeatable, and the draw is independent of the
request's outcome. A decision is labelled when coin < p, with p from the verification plan
(verification_plan.py; `VerificationSampler` is the uniform special case, p = share), so the
calibrator knows each label's probability exactly. The cap is exact money: a verification is
admitted only if its estimated cost still fits under the day's cap, and charged at its real cost
afterwards. A decision refused by the cap was not labelled although its p said it might be: the
caller must keep that rare (docs/quality-guarantee.md). The day is given by the caller (the
store's clock), never read here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_SCALE = float(2**64)


def coin(seed: str, key: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key)."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(slots=True)
class VerificationBudget:
    """Spend on verification for one day; shared state (one row or hash per route or cache)."""

    day: str = ""
    spent: Decimal = Decimal(0)
    verified: int = 0
    skipped_for_cap: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "spent": str(self.spent),
            "verified": self.verified,
            "skipped_for_cap": self.skipped_for_cap,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerificationBudget:
        return cls(
            str(data["day"]), Decimal(str(data["spent"])), int(data["verified"]), int(data["skipped_for_cap"])
        )


@dataclass(slots=True, frozen=True)
class VerificationSampler:
    share: float
    daily_usd_cap: Decimal
    seed: str = "faregate"

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {self.share}")

    def sampled(self, key: str) -> bool:
        """Whether this decision is in the verification sample (before the cap)."""
        return coin(self.seed, key) < self.share

    def admit(self, budget: VerificationBudget, day: str, key: str, estimated_cost: Decimal) -> bool:
        """True: verify this decision now. Rolls the budget over to `day`; counts cap refusals."""
        if budget.day != day:
            budget.day, budget.spent, budget.verified, budget.skipped_for_cap = day, Decimal(0), 0, 0
        if not self.sampled(key):
            return False
        if budget.spent + estimated_cost > self.daily_usd_cap:
            budget.skipped_for_cap += 1
            return False
        return True

    def charge(self, budget: VerificationBudget, cost: Decimal) -> None:
        """Record a verification made and what it really cost."""
        budget.spent += cost
        budget.verified += 1
