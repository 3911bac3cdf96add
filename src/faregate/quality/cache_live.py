"""The semantic cache's acceptance threshold, calibrated on verified live lookups.

With `cache.semantic.max_wrong_hit_rate` set, the semantic cache serves a neighbour's answer only
at or above the threshold `CacheAcceptance` (learning/online/cache_acceptance.py) has certified
from labelled lookups: the lowest one whose upper confidence bound on wrong answers served / all
lookups stays within the bound. Nothing is served until the evidence is in.

Labels, as the library's replay draws them:
- a lookup not served whose best guard-passing candidate was at or above the floor (0.80) is
  answered by a fresh call anyway: once that answer is stored, the candidate's cached answer is
  compared with it (free);
- a served hit is verified with probability `verify_hits` (a coin on the request id) by a fresh
  call after the response, through the attempt loop, charged to the cache's daily USD cap (a paid
  label; quality/verifier.py).

Conflicts (the library's point that crowded regions need stricter thresholds): a labelled lookup
whose candidate was a wrong answer records that similarity against the candidate's entry (and the
entry stored for the lookup), by its answer's exact key; a hit on an entry with a conflict at or
above its similarity minus `crowd_margin` is not served. Only the served candidate is checked, not
its neighbours (the library also checks candidates within 0.03 of it), and only entries with a
conflict are remembered (at most CONFLICTS, newest kept). Like a route's calibration, the state
is one `calibration_state` row (`cache`) with a journal of unsaved changes (quality/service.py).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from faregate.learning.online.cache_acceptance import AcceptanceState, CacheAcceptance
from faregate.learning.online.cache_prior import load_prior, prior_state
from faregate.learning.online.sampling import VerificationBudget, coin
from faregate.learning.online.settings import SemanticAcceptanceSettings
from faregate.quality.state import NANO, Pause, Totals, UnsavedLimit, roll_over, today
from faregate.store.rows import to_nanousd, usd_text

SCOPE = "cache"
# Entries with a recorded conflict kept (by their answer's exact key), newest last.
CONFLICTS = 10_000
# The threshold the semantic cache is given while none is certified: nothing reaches it.
NOTHING = 2.0


class CacheCalibration:
    def __init__(
        self,
        settings: SemanticAcceptanceSettings,
        comparator: str,
        seed: str = "faregate",
        judge_model: str | None = None,
    ) -> None:
        self.route = SCOPE
        self.settings = settings
        self.comparator = comparator
        # The `llm_judge` comparator's model (asked through the gateway; None for the others).
        self.judge_model = judge_model
        self.acceptance = CacheAcceptance(
            settings.max_wrong_hit_rate,
            settings.confidence,
            sequential=settings.sequential,
            method=settings.method,
        )
        self.state = self.initial_state()
        self.budget = VerificationBudget()
        self.totals = Totals()
        self.seed = f"{seed}:cache"
        self.journal: list[Callable[[], None]] = []
        self.unsaved = UnsavedLimit("semantic cache")
        # Exact key of a cached answer -> the highest similarity a different question matched it at.
        self.conflicts: dict[str, float] = {}
        # The day the daily cap paused, if any: apart from the day's spend, as a route's.
        self.paused: Pause | None = None
        # What every instance's verifications in flight hold against the daily cap, as the store's
        # cap ledger last said (quality/spend.py; not part of the state).
        self.held = Decimal(0)

    def initial_state(self) -> AcceptanceState:
        """Nothing, or the shipped offline calibration as `prior_lookups` pseudo-lookups."""
        if not self.settings.prior_lookups:
            return AcceptanceState(floor=self.settings.floor)
        prior = load_prior()
        if prior.floor != self.settings.floor:
            raise ValueError(f"the cache prior is for floor {prior.floor}, not {self.settings.floor}")
        state = prior_state(prior, self.settings.prior_lookups)
        self.acceptance.calibrate(state)
        return state

    # -- the store's view (quality/service.py) ------------------------------------------------------

    def fingerprint(self) -> str:
        s = self.settings
        return (
            f"cache|b={s.max_wrong_hit_rate}|c={s.confidence}|seq={s.sequential}|floor={s.floor}"
            f"|cmp={self.comparator}"
            + (f"|judge={self.judge_model}" if self.judge_model else "")
            + (f"|bound={s.method}" if s.method != "product" else "")
            + (f"|prior={s.prior_lookups}" if s.prior_lookups else "")
        )

    def models(self) -> dict[str, str]:
        """Nothing beyond the fingerprint (a judge model is in it)."""
        return {}

    def state_json(self) -> dict[str, Any]:
        return {
            "acceptance": self.state.to_json(),
            "budget": self.budget.to_json(),
            "totals": self.totals.to_json(),
            "conflicts": self.conflicts,
            "paused": None if self.paused is None else self.paused.to_json(),
        }

    def adopt_json(self, data: dict[str, Any]) -> None:
        self.state = AcceptanceState.from_json(data["acceptance"])
        self.budget = VerificationBudget.from_json(data["budget"])
        self.totals = Totals.from_json(data["totals"])
        self.conflicts = {str(k): float(v) for k, v in data.get("conflicts", {}).items()}
        # A row from before the pause was kept apart paused by marking its day's spend full.
        self.paused = Pause.from_json(data.get("paused"))
        for change in self.journal:
            change()

    def apply(self, change: Callable[[], None]) -> None:
        change()
        self.journal.append(change)

    @property
    def scope(self) -> str:
        """Its row in the store (quality/service.py), apart from any route's ("route:NAME")."""
        return SCOPE

    # -- lookups ------------------------------------------------------------------------------------

    @property
    def floor(self) -> float:
        return self.settings.floor

    def threshold(self) -> float:
        """What the semantic cache serves at: the certified threshold, or NOTHING."""
        return NOTHING if self.state.threshold is None else self.state.threshold

    def looked_up(self, similarity: float | None, served: bool) -> bool:
        """Every semantic lookup: its best guard-passing candidate's similarity (None: none). False:
        not counted, as too many changes wait for the store (quality/state.py, MAX_UNSAVED); such a
        lookup is not labelled either (its candidate, or its hit if served)."""
        if self.unsaved.reached(self.journal):
            return False

        def count() -> None:
            self.acceptance.record_lookup(self.state, similarity)
            self.state.served += served

        self.apply(count)
        return True

    def verify_hit(self, request_id: str) -> bool:
        """Is this served hit drawn for verification (before the cap)?"""
        return coin(self.seed, request_id) < self.settings.verify_hits

    def conflicted(self, key: str, similarity: float) -> bool:
        """A different question matched this entry this close before: do not serve it."""
        seen = self.conflicts.get(key)
        return seen is not None and seen >= similarity - self.acceptance.crowd_margin

    def observe(self, similarity: float, wrong: bool, entries: tuple[str, ...] = ()) -> None:
        """A labelled lookup; `entries`: the exact keys of the candidate's answer and of the answer
        stored for the lookup (a wrong label records a conflict on both)."""

        def change() -> None:
            self.acceptance.observe(self.state, similarity, wrong, [])
            self.acceptance.calibrate(self.state)
            self.totals.verifications += 1
            self.totals.losses += wrong
            if wrong and similarity >= self.state.floor:
                for key in entries:
                    self.conflicts[key] = max(similarity, self.conflicts.pop(key, -1.0))
                while len(self.conflicts) > CONFLICTS:
                    del self.conflicts[next(iter(self.conflicts))]

        self.apply(change)

    def count_label(self, kind: str) -> None:
        def change() -> None:
            self.totals.by_label[kind] = self.totals.by_label.get(kind, 0) + 1

        self.apply(change)

    # -- the daily cap ------------------------------------------------------------------------------

    def exhausted(self, day: str) -> bool:
        """Is the day paused: its cap spent, or a verification refused?"""
        cap = self.settings.daily_usd_cap
        spent = self.budget.day == day and self.budget.spent >= cap
        return spent or (self.paused is not None and self.paused.holds(day, cap))

    def left_today(self, day: str) -> Decimal:
        """What the daily cap leaves to spend today, holds aside (nothing once the day is paused)."""
        cap = self.settings.daily_usd_cap
        if self.paused is not None and self.paused.holds(day, cap):
            return Decimal(0)
        return cap - (self.budget.spent if self.budget.day == day else Decimal(0))

    def admit(self, day: str, estimate: Decimal) -> bool:
        """The check alone, holds aside (quality/spend.py admits against every instance's holds)."""
        if estimate <= self.left_today(day):
            return True
        self.apply(lambda: self.refuse(day))
        return False

    def refuse(self, day: str) -> None:
        """Paused for the day (not journaled: the caller writes it at once, quality/spend.py)."""
        self.totals.skipped_for_cap += 1
        if not roll_over(self.budget, day):
            return  # a day already over: today is not paused for it
        self.budget.skipped_for_cap += 1
        # Paused from now on; the day's spend stays what was spent, so a cap raised since (which
        # resumes the day) leaves the raised cap less the real spend.
        self.paused = Pause(day, self.settings.daily_usd_cap)

    def charge(self, cost: Decimal, day: str) -> None:
        """The real cost in the day's spend as the calibration counts it and in the totals (the
        cap's ledger counts it when the hold is settled, quality/spend.py)."""

        def change() -> None:
            if roll_over(self.budget, day):
                self.budget.spent += cost
                self.budget.verified += 1
            self.totals.cost_nano += to_nanousd(cost)

        self.apply(change)

    def failed(self) -> None:
        def change() -> None:
            self.totals.failed += 1

        self.apply(change)

    # -- figures ------------------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        state = self.state
        threshold = state.threshold
        bound = self.acceptance.bound(state, threshold if threshold is not None else 1.0)
        labelled, wrong = sum(state.labelled), sum(state.wrong)
        return {
            "max_wrong_hit_rate": self.settings.max_wrong_hit_rate,
            "confidence": self.settings.confidence,
            "bound": self.settings.method,
            # Pseudo-lookups of the shipped offline calibration counted in `lookups` (0: none).
            "prior_lookups": self.settings.prior_lookups,
            "threshold": threshold,
            # R_upper at the threshold in force (at 1.00 while none is).
            "wrong_hit_bound": bound.upper,
            "lookups": state.lookups,
            "served": state.served,
            "labelled": labelled,
            "wrong": wrong,
            "verifications": self.totals.verifications,
            # Its two kinds (a route's `cheap` label is not one of the cache's).
            "by_label": {kind: self.totals.by_label.get(kind, 0) for kind in ("free", "paid")},
            "verification_cost_usd": usd_text(Decimal(self.totals.cost_nano) / NANO),
            "daily_usd_cap": usd_text(self.settings.daily_usd_cap),
            "held_usd": usd_text(self.held),
            "cap_reached": self.exhausted(today()),
            "skipped_for_cap": self.totals.skipped_for_cap,
            "failed": self.totals.failed,
            "conflicts": len(self.conflicts),
        }
