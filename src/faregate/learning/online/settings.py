"""Quality targets as settings types the config can adopt (`routes.NAME.quality`, `cache.semantic`).

Strict like every settings type (unknown keys are errors). Defaults are the conservative side:
a 95% quality target at 95% confidence, 5% of cheap decisions verified, and no semantic hit until
the acceptance has evidence.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class VerificationSettings(_Strict):
    """Shadow verification: a sampled share of decisions also gets the reference answer."""

    # Share of decisions verified (uniformly at random, so the sample is unbiased for any threshold).
    share: float = 0.05
    # Verification stops for the day once it has cost this much (USD, exact).
    daily_usd_cap: Decimal = Decimal("5")
    # How a cheap answer is compared to the reference: exact, numeric, final_answer, json,
    # embedding or llm_judge (see learning/online/comparators.py).
    comparator: str = "final_answer"

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"verification share must be in (0, 1], got {self.share}")
        if self.daily_usd_cap < 0:
            raise ValueError("daily_usd_cap must not be negative")


class QualitySettings(_Strict):
    """`quality: {target: 0.95}` on a route: keep this share of the strong path's quality."""

    target: float = 0.95
    # One-sided confidence of the bound that must stay within the target.
    confidence: float = 0.95
    # Below this many verified outcomes the route takes the strong path for every request.
    min_verified: int = 30
    verification: VerificationSettings = msgspec.field(default_factory=VerificationSettings)

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"quality target must be in (0, 1], got {self.target}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.min_verified < 1:
            raise ValueError("min_verified must be at least 1")


class SemanticAcceptanceSettings(_Strict):
    """`cache.semantic.max_wrong_hit_rate`: the share of lookups that may get a wrong answer."""

    max_wrong_hit_rate: float = 0.005
    confidence: float = 0.95
    # No semantic hit in a similarity band with fewer labelled lookups than this.
    min_evidence: int = 30
    # Candidates below this similarity are never served and need no label.
    floor: float = 0.80
    # Share of served hits verified by a fresh call after the response.
    verify_hits: float = 0.05
    daily_usd_cap: Decimal = Decimal("5")

    def __post_init__(self) -> None:
        if not 0.0 < self.max_wrong_hit_rate < 1.0:
            raise ValueError(f"max_wrong_hit_rate must be in (0, 1), got {self.max_wrong_hit_rate}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if not 0.0 <= self.verify_hits <= 1.0:
            raise ValueError("verify_hits must be in [0, 1]")
