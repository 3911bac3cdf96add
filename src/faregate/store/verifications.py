"""Shadow verifications and calibration state: the row type and the interface both stores give.

`verifications`: one row per verification (quality/verifier.py), its real cost in nano-USD.
`calibration_state`: one row per calibrated route (or cache scope) holding its `LiveState` as
JSON, with a `version` for compare-and-set: `save` writes only if the row is still at the version
the writer read, so of two instances updating one route at once exactly one wins and the other
reloads, re-applies its update and tries again (quality/service.py). SQLite (one process) and
PostgreSQL (many) share this contract: store/sqlite/verifications.py, store/postgres/verifications.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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


COLUMNS = (
    "request_id, scope, kind, label_kind, decision, rank, probability, comparator, outcome,"
    " reference_model, cost_nanousd, created_at"
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
    )


class VerificationStore(Protocol):
    async def insert(self, row: VerificationRow) -> None: ...

    async def recent(self, scope: str | None = None, limit: int = 50) -> list[VerificationRow]:
        """Newest first."""
        ...

    async def load_state(self, scope: str) -> tuple[int, str] | None:
        """(version, state JSON), or None when the scope has no state yet."""
        ...

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        """Write `state` as version expected + 1 if the row is still at `expected` (0: no row yet).
        False: another writer got there first."""
        ...
