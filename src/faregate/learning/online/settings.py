"""Quality targets as settings types the config can adopt (`routes.NAME.quality`, `cache.semantic`).

Strict like every settings type (unknown keys are errors). Defaults are the conservative side:
a 95% quality target at 95% confidence (anytime-valid), shadow calls on 5% of decisions, no prior
(every route starts all-strong until live evidence certifies a cheap share), and no semantic hit
until the acceptance has evidence.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class VerificationSettings(_Strict):
    """Shadow verification: a sampled share of decisions also gets the other path's answer."""

    # Expected share of decisions given a shadow call (verification_plan.py: denser near the cut).
    share: float = 0.05
    # Rank band above the cut sampled as densely as the cheap side, and the rate deep on the strong
    # side relative to it (frontier 0 with rest_ratio 1: uniform sampling).
    frontier: float = 0.1
    rest_ratio: float = 0.1
    # Verification stops for the day once it has cost this much (USD, exact).
    daily_usd_cap: Decimal = Decimal("5")
    # How a cheap answer is compared to the reference: exact, numeric, final_answer, json,
    # embedding or llm_judge (see learning/online/comparators.py).
    comparator: str = "final_answer"
    # llm_judge: the model (or route) asked, through the gateway; its calls are verification cost.
    judge_model: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"verification share must be in (0, 1], got {self.share}")
        if not 0.0 <= self.frontier <= 1.0 or not 0.0 < self.rest_ratio <= 1.0:
            raise ValueError("frontier must be in [0, 1] and rest_ratio in (0, 1]")
        # Checked finite first: a NaN compares by raising decimal.InvalidOperation, not a config error.
        if not self.daily_usd_cap.is_finite() or self.daily_usd_cap < 0:
            raise ValueError("daily_usd_cap must be a non-negative amount of USD")


class QualitySettings(_Strict):
    """`quality: {target: 0.95}` on a route: keep this share of the strong path's quality."""

    target: float = 0.95
    # Confidence of the anytime-valid test that a cheap share keeps the target (calibrator.py).
    confidence: float = 0.95
    # Pseudo-outcomes from the router or judge file's calibration curve (prior.py); 0: no prior,
    # all requests on the strong path until live evidence certifies a cheap share. 200 is the
    # documented choice when a prior is wanted (docs/quality-guarantee.md).
    prior_outcomes: int = 0
    verification: VerificationSettings = msgspec.field(default_factory=VerificationSettings)
    # Router routes: learn the deployment's domains from verified outcomes (ranking_switch.py): the
    # prior corrected by labelled neighbours as a challenger, switched in when a test shows it ranks
    # better. Off by default (docs/quality-guarantee.md: on the replays it never paid).
    learn_domains: bool = False
    # Labelled examples kept (each about 1 KB in the stored state, twice once a ranking is frozen).
    domain_examples: int = 1000

    def __post_init__(self) -> None:
        # The challenger's test starts at 100 examples (ranking_switch.py).
        if not 100 <= self.domain_examples <= 20000:
            raise ValueError(f"domain_examples must be in [100, 20000], got {self.domain_examples}")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"quality target must be in (0, 1], got {self.target}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.prior_outcomes < 0:
            raise ValueError("prior_outcomes must not be negative")


class SemanticAcceptanceSettings(_Strict):
    """`cache.semantic.max_wrong_hit_rate`: the share of lookups that may get a wrong answer."""

    # Wrong answers served / all lookups (vCache's definition), bounded at `confidence`.
    max_wrong_hit_rate: float = 0.005
    confidence: float = 0.95
    # Anytime-valid bounds (about 3.5-5x the evidence) instead of fixed-sample Clopper-Pearson ones.
    sequential: bool = False
    # The bound: "product" or "direct" (learning/online/cache_acceptance.py).
    method: str = "product"
    # Pseudo-lookups from the shipped offline calibration (cache_prior.py); 0: no prior.
    prior_lookups: int = 0
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
        if self.method not in ("product", "direct"):
            raise ValueError(f"bound must be 'product' or 'direct', got {self.method!r}")
        if self.prior_lookups < 0:
            raise ValueError("prior_lookups must not be negative")
        if not self.daily_usd_cap.is_finite() or self.daily_usd_cap < 0:
            raise ValueError("daily_usd_cap must be a non-negative amount of USD")
