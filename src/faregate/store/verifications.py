"""Shadow verifications and calibration state: the row type and the interface both stores give.

`verifications`: one row per verification (quality/verifier.py), its real cost in nano-USD, keyed
by its own `verification_id` so that writing it again (after a lost answer) adds nothing.
`calibration_state`: one row per calibrated route (or cache scope) holding its `LiveState` as
JSON, with a `version` for compare-and-set: `save` writes only if the row is still at the version
the writer read, so of two instances updating one route at once exactly one wins and the other
reloads, re-applies its update and tries again (quality/service.py). SQLite (one process) and
PostgreSQL (many) share this contract: store/sqlite/verifications.py, store/postgres/verifications.py.

`verification_holds` and `verification_spend`: the daily verification caps' ledger
(quality/spend.py), apart from the calibration state so that an admission writes a row of a few
bytes instead of the scope's whole state (megabytes with domain learning) and does not contend with
the calibration's own writes. A hold is a verification's worst case admitted and not settled (its
id, scope, instance, amount as exact decimal text, day); the spend is the real cost charged per
scope and UTC day, exact decimal text. Admission (`admit_hold`) and settlement (`settle_hold`) are
each one transaction: SQLite's BEGIN IMMEDIATE, PostgreSQL's transaction-scoped advisory lock per
scope.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

Verdict = Literal["admitted", "wait", "refused"]


@dataclass(slots=True, frozen=True)
class VerificationRow:
    request_id: str
    # The route name (router / cascade), or the cache scope.
    scope: str
    kind: str  # router / cascade / cache
    label_kind: str  # free / cheap / paid
    decision: str  # cheap / strong (a cache: served / not)
    rank: float  # rank, or a cache candidate's similarity
    probability: float
    comparator: str
    outcome: str  # acceptable / loss / failed
    reference_model: str | None
    cost_nano: int
    created_at: float
    # The row's own id, made once with it: a row written again (its insert's answer was lost)
    # is the same row, not a second one counting its cost twice ("" for rows from before it).
    verification_id: str = field(default_factory=lambda: f"vf_{secrets.token_hex(12)}")


COLUMNS = (
    "request_id, scope, kind, label_kind, decision, rank, probability, comparator, outcome,"
    " reference_model, cost_nanousd, created_at, verification_id"
)


def as_params(row: VerificationRow) -> tuple[object, ...]:
    return (
        row.request_id,
        row.scope,
        row.kind,
        row.label_kind,
        row.decision,
        row.rank,
        row.probability,
        row.comparator,
        row.outcome,
        row.reference_model,
        row.cost_nano,
        row.created_at,
        row.verification_id,
    )


def from_params(values: tuple[object, ...] | list[object]) -> VerificationRow:
    v = list(values)
    return VerificationRow(
        str(v[0]),
        str(v[1]),
        str(v[2]),
        str(v[3]),
        str(v[4]),
        float(v[5]),  # type: ignore[arg-type]
        float(v[6]),  # type: ignore[arg-type]
        str(v[7]),
        str(v[8]),
        None if v[9] is None else str(v[9]),
        int(v[10]),  # type: ignore[call-overload]
        float(v[11]),  # type: ignore[arg-type]
        "" if v[12] is None else str(v[12]),
    )


@dataclass(slots=True, frozen=True)
class HoldAsk:
    """An admission as the store decides it (quality/spend.py): `amount` (a verification's worst
    case, USD) against the day's `cap`, beside every live instance's holds of the scope. `left` is
    what the caller's calibration state says the cap leaves today (a ceiling: its copy of the
    day's spend, which also says the day was paused). A hold of an instance that is not `instance`,
    not in `alive` and older than `lease_s` is a dead process's: dropped."""

    scope: str
    day: str
    hold_id: str
    instance: str
    amount: Decimal
    cap: Decimal
    left: Decimal
    alive: frozenset[str]
    lease_s: float
    now: float

    def lapsed(self, instance: str, at: float) -> bool:
        """Its instance's lease lapsed; a hold younger than a lease may be an instance's started
        since the leases were read (quality/leases.py)."""
        return instance != self.instance and instance not in self.alive and at < self.now - self.lease_s

    def verdict(self, spent: Decimal, held: Decimal, paused: Decimal | None = None) -> Verdict:
        """Refused: the day is paused at this cap or above (`paused`: the cap a refusal paused the
        day at), or it cannot fit even alone (the day is then paused at this cap); wait: it would
        fit alone but not beside the holds; else admitted."""
        left = min(self.cap - spent, self.left)
        if (paused is not None and self.cap <= paused) or self.amount > left:
            return "refused"
        return "wait" if held + self.amount > left else "admitted"


class VerificationStore(Protocol):
    async def insert(self, row: VerificationRow) -> None:
        """Idempotent: a row whose `verification_id` is there already is not written again."""
        ...

    async def recent(self, scope: str | None = None, limit: int = 50) -> list[VerificationRow]:
        """Newest first."""
        ...

    async def cost_nano(self, scope: str, cache: bool = False) -> int:
        """What every verification of `scope` cost (nano-USD), whatever calibration made it: the
        semantic cache's (`cache`: scope "cache", kind "cache") or a route's (a route may be
        named "cache" too)."""
        ...

    async def load_state(self, scope: str, newer_than: int = 0) -> tuple[int, str] | None:
        """(version, state JSON) if the row's version is above `newer_than`; None when the scope has
        no state yet or the row has not moved since (its state, megabytes with domain learning, is
        then not read: the refresh asks every couple of seconds)."""
        ...

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        """Write `state` as version expected + 1 if the row is still at `expected` (0: no row yet).
        False: another writer got there first."""
        ...

    async def admit_hold(self, ask: HoldAsk) -> tuple[Verdict, Decimal]:
        """In one transaction: drop the lapsed holds of the scope, decide (`HoldAsk.verdict`) on the
        day's spend, its pause and the holds left, and add the hold if admitted (pause the day at
        the cap if refused: its spend stays what was spent). Returns the verdict and what the
        scope's holds then add up to."""
        ...

    async def settle_hold(self, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
        """In one transaction: the hold gone and its real cost added to `day`'s spend, if the hold
        was there (so a settlement made twice counts once; a hold dropped as a dead instance's
        is charged through the calibration's own copy of the spend). Returns what the scope's
        holds then add up to."""
        ...

    async def cap_ledger(self, scope: str, day: str) -> tuple[Decimal, dict[str, tuple[str, Decimal]]]:
        """The day's spend and the scope's holds (hold id -> instance, amount)."""
        ...


def cost_sql(placeholder: str, cache: bool) -> str:
    """The sum of `cost_nano` for one scope, the cache's rows or a route's."""
    kind = "kind = 'cache'" if cache else "kind <> 'cache'"
    return f"SELECT COALESCE(SUM(cost_nanousd), 0) FROM verifications WHERE scope = {placeholder} AND {kind}"
