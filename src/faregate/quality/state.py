"""What a calibrated route keeps: its state (one store row), its counters, and one decision.

`LiveState` round-trips through JSON (quality/service.py stores it); `Decision` lives on a request's
plan from decision time until its verification comes back (quality/route_decisions.py decides,
quality/route_verification.py verifies). Money is exact: costs are counted in nano-USD.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from faregate.learning.online.betting import Array
from faregate.learning.online.calibrator import CalibrationState, ScoreRanks
from faregate.learning.online.domain_router import Vector
from faregate.learning.online.health import HealthState
from faregate.learning.online.ranking_switch import SwitchState
from faregate.learning.online.sampling import VerificationBudget
from faregate.learning.thresholds import CalibrationPoint

Kind = Literal["router", "cascade"]
LabelKind = Literal["free", "cheap", "paid"]
NANO = Decimal(1_000_000_000)
# Unsaved changes a calibration keeps in its journal (quality/service.py saves them every couple of
# seconds). Beyond them the store has not taken the state for long (it is down): decisions and
# lookups are neither labelled nor counted until it has, so the journal stops growing (~1.5 KB a
# route's decision, ~350 B a cache lookup). A stretch skipped for the store's sake, not for any
# outcome, as while the daily cap pauses the day: the tests stay valid.
MAX_UNSAVED = 10_000

log = logging.getLogger("faregate.quality")


def today(now: float | None = None) -> str:
    """The UTC day the daily cap counts in."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


@dataclass(slots=True)
class Decision:
    """What was decided for one request, kept on its plan until its verification comes back."""

    route: str
    kind: Kind
    request_id: str
    score: float
    # The rank that decided (the router's, or the length's once the router is flagged).
    rank: float
    router_rank: float
    length_rank: float
    cut: float
    cheap: bool
    probability: float
    # The coin fell under p: this decision is to be verified.
    labelled: bool
    # free: both answers exist (a cascade escalation); cheap: a shadow call to the weak model;
    # paid: a shadow call to the strong model.
    label_kind: LabelKind
    floor: Array
    least: float
    epoch: int
    # The daily cap was reached (or the verifications' backlog is full): the calibration is paused,
    # this decision is not observed.
    paused: bool = False
    # A cascade's cheap answer (compared with the strong one on an escalation: a free label).
    cheap_text: str | None = None
    # Domain learning (router routes): the challenger ranking's rank, and the prompt's embedding
    # (kept on labelled decisions only: it becomes an example when the verification comes back).
    challenger_rank: float = 0.0
    vector: Vector | None = None


@dataclass(slots=True)
class Totals:
    """Counters for the dashboard and /metrics (persisted with the state)."""

    verifications: int = 0
    by_label: dict[str, int] = field(default_factory=lambda: {"free": 0, "cheap": 0, "paid": 0})
    losses: int = 0
    cost_nano: int = 0
    failed: int = 0
    skipped_for_cap: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "verifications": self.verifications,
            "by_label": dict(self.by_label),
            "losses": self.losses,
            "cost_nano": self.cost_nano,
            "failed": self.failed,
            "skipped_for_cap": self.skipped_for_cap,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Totals:
        return cls(
            int(data["verifications"]),
            {str(k): int(v) for k, v in data["by_label"].items()},
            int(data["losses"]),
            int(data["cost_nano"]),
            int(data["failed"]),
            int(data["skipped_for_cap"]),
        )


@dataclass(slots=True, frozen=True)
class Pause:
    """The UTC day the daily cap paused and the cap that could not admit a verification: kept apart
    from the day's spend (which stays what was spent); a cap raised above it resumes the day."""

    day: str
    cap: Decimal

    def holds(self, day: str, cap: Decimal) -> bool:
        return self.day == day and cap <= self.cap

    def to_json(self) -> dict[str, str]:
        return {"day": self.day, "cap": str(self.cap)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Pause | None:
        return None if data is None else cls(str(data["day"]), Decimal(str(data["cap"])))


@dataclass(slots=True)
class LiveState:
    """A route's whole calibration state: what the store keeps per route."""

    calibration: CalibrationState
    health: HealthState
    ranks: ScoreRanks
    length_ranks: ScoreRanks
    budget: VerificationBudget = field(default_factory=VerificationBudget)
    totals: Totals = field(default_factory=Totals)
    # Shadow calls made (the pace's count: router, cheap and paid; cascade, paid only) and decisions.
    shadow_calls: int = 0
    decisions: int = 0
    flagged: bool = False
    flag_reason: str = ""
    epoch: int = 0
    # Domain learning (ranking_switch.py): the challenger's evidence and test, the frozen ranking.
    switch: SwitchState = field(default_factory=SwitchState)
    # The day the daily cap paused, if any (route_outcomes.py).
    paused: Pause | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_json(),
            "health": self.health.to_json(),
            "ranks": self.ranks.to_json(),
            "length_ranks": self.length_ranks.to_json(),
            "budget": self.budget.to_json(),
            "totals": self.totals.to_json(),
            "shadow_calls": self.shadow_calls,
            "decisions": self.decisions,
            "flagged": self.flagged,
            "flag_reason": self.flag_reason,
            "epoch": self.epoch,
            "switch": self.switch.to_json(),
            "paused": None if self.paused is None else self.paused.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LiveState:
        return cls(
            CalibrationState.from_json(data["calibration"]),
            HealthState.from_json(data["health"]),
            ScoreRanks.from_json(data["ranks"]),
            ScoreRanks.from_json(data["length_ranks"]),
            VerificationBudget.from_json(data["budget"]),
            Totals.from_json(data["totals"]),
            int(data["shadow_calls"]),
            int(data["decisions"]),
            bool(data["flagged"]),
            str(data["flag_reason"]),
            int(data["epoch"]),
            SwitchState.from_json(data["switch"]) if "switch" in data else SwitchState(),
            # A row from before the pause was kept apart paused by marking its day's spend full.
            Pause.from_json(data.get("paused")),
        )


@dataclass(slots=True, frozen=True)
class Prior:
    """The model file's calibration curve (prior.py) and the strong model's training accuracy."""

    curve: tuple[CalibrationPoint, ...]
    strong_accuracy: float


class UnsavedLimit:
    """Whether a calibration's journal of unsaved changes is full (MAX_UNSAVED), logged once each way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.full = False

    def reached(self, journal: Sized) -> bool:
        full = len(journal) >= MAX_UNSAVED
        if full != self.full:
            self.full = full
            if full:
                log.warning(
                    "%s: %d calibration changes not saved (is the store down?); nothing is labelled "
                    "or counted until they are",
                    self.name,
                    len(journal),
                )
            else:
                log.warning("%s: the calibration is saved again; labelling and counting resume", self.name)
        return full


def roll_over(budget: VerificationBudget, day: str) -> bool:
    """Move the budget on to `day`. False: `day` is over (the budget counts a later one: a
    verification admitted before midnight and charged after one admitted since), so nothing of it
    goes in the budget, which would otherwise go back to that day and lose today's spend and pause."""
    if day < budget.day:  # "YYYY-MM-DD" sorts by date
        return False
    if budget.day != day:
        budget.day, budget.spent, budget.verified, budget.skipped_for_cap = day, Decimal(0), 0, 0
    return True
