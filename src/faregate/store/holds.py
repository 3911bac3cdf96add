"""The reservation operations every hold store offers (SQLite embedded, Redis shared).

Kept free of policy: the caller says what to check (amount, budget windows as
"spend since hour H stays within L"), the store checks and writes it atomically.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

ReserveStatus = Literal["ok", "credits", "budget", "revoked", "no_account", "requests", "tokens"]


@dataclass(slots=True, frozen=True)
class BudgetCheck:
    since_hour: int
    limit_nano: int


@dataclass(slots=True, frozen=True)
class HoldRow:
    hold_id: str
    key_id: str
    request_id: str | None
    amount_nano: int
    tokens: int
    hour: int
    created_at: float
    expires_at: float
    # The serving process that made it (its lease says whether it is alive); None: made before
    # holds had owners.
    instance_id: str | None = None


@dataclass(slots=True, frozen=True)
class InstanceRow:
    """A serving process that holds (or held) reservations, and its lease."""

    instance_id: str
    lease_until: float | None  # unix seconds; None: the lease is gone (lapsed or ended)
    holds: int
    started_at: float | None = None
    host: str = ""
    pid: int = 0

    def alive(self, now: float) -> bool:
        return self.lease_until is not None and self.lease_until > now


@dataclass(slots=True, frozen=True)
class ReserveOutcome:
    """What a reservation did. On refusal, balance/held are as seen at that moment;
    `window` is the index of the budget that refused and `window_spent_nano` its spend."""

    status: ReserveStatus
    balance_nano: int = 0
    held_nano: int = 0
    window: int | None = None
    window_spent_nano: int = 0
    # Rate-limit bucket levels after the decision (shared store only; None: not limited).
    requests_level: float | None = None
    tokens_level: float | None = None


def hold_entry(hold_id: str, what: Literal["res", "close", "late"]) -> str:
    """Ledger entry ids of a hold: one reservation, at most one close (settled, released or
    expired) and at most one late charge (settled after the hold was already gone)."""
    return f"{hold_id}:{what}"


def new_instance_id() -> str:
    """A fresh id for one serving process (a restart is a new instance)."""
    return f"inst_{secrets.token_hex(6)}"


LEASE_LAPSED_NOTE = "released: its instance's lease lapsed (the process is gone)"


def new_entry_id(kind: str) -> str:
    """A fresh id for a ledger row that belongs to no hold (a grant or a top-up)."""
    return f"{kind}_{secrets.token_hex(10)}"
