"""What the money gate needs from a store: the `AccountBackend` protocol.

Two implementations: `embedded.EmbeddedAccounts` (SQLite, rate limits in process) and
`shared.SharedAccounts` (Redis for reservations and rate limits, PostgreSQL for the ledger).
`MeteredAdmission` and `AccountsService` only talk to this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from faregate.accounts.money import usd_text
from faregate.accounts.policy import Limits, Window
from faregate.accounts.ratelimit import RateRefusal, RateState
from faregate.store.holds import HoldRow, InstanceRow
from faregate.store.protocols import AccountTable, AuditRow, LedgerRow


@dataclass(slots=True, frozen=True)
class ReserveAsk:
    key_id: str
    hold_id: str
    request_id: str | None
    amount_nano: int
    tokens: int
    hour: int
    windows: tuple[Window, ...]
    limits: Limits
    ttl_s: float
    # The serving process that holds it (accounts.instance_lease).
    instance_id: str | None = None


@dataclass(slots=True, frozen=True)
class HoldRef:
    """What settling a hold needs back (kept in admission.Hold.handle)."""

    hold_id: str
    request_id: str | None
    hour: int
    tokens: int
    limits: Limits


@dataclass(slots=True, frozen=True)
class Admitted:
    balance_nano: int
    rate: RateState | None


@dataclass(slots=True, frozen=True)
class Refused:
    reason: str  # credits | budget | revoked | no_account | rate
    balance_nano: int = 0
    held_nano: int = 0
    window: Window | None = None
    window_spent_nano: int = 0
    rate: RateRefusal | None = None


@dataclass(slots=True, frozen=True)
class Balance:
    balance_nano: int
    held_nano: int


@dataclass(slots=True)
class AuditReport:
    accounts: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def balance_audit(rows: list[AuditRow], orphans: list[str]) -> AuditReport:
    """Every stored balance against the sum of its ledger rows (the check both backends share)."""
    report = AuditReport()
    for row in rows:
        report.accounts += 1
        report.entries += row.entries
        if row.balance_nano != row.ledger_nano:
            difference = usd_text(row.balance_nano - row.ledger_nano)
            report.problems.append(
                f"{row.key_id}: balance ${usd_text(row.balance_nano)} but the ledger sums to "
                f"${usd_text(row.ledger_nano)} (difference ${difference})"
            )
    report.problems.extend(f"{key_id}: ledger rows for a key without an account" for key_id in orphans)
    return report


class AccountBackend(Protocol):
    @property
    def table(self) -> AccountTable:
        """Where keys' accounts and ledger rows are stored durably."""
        ...

    async def start(self) -> None:
        """Background work (expiry sweeps, ledger shipping); call once in a serving process."""
        ...

    async def close(self) -> None: ...

    async def reserve(self, ask: ReserveAsk) -> Admitted | Refused: ...

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None: ...

    async def release(self, key_id: str, ref: HoldRef) -> None: ...

    async def take_request(
        self, key_id: str, requests_per_minute: int | None, tokens_per_minute: int | None = None
    ) -> RateState | RateRefusal | Refused:
        """A cache hit: the key is checked as a reservation checks it (Refused "revoked" or
        "no_account", 401, before any rate limit), then one request is counted against its
        requests-per-minute bucket alone (None: no such limit). The token bucket is only read
        (tokens_per_minute: its limit, None: not reported), for the headers."""
        ...

    async def sweep(self) -> int:
        """Release expired holds now; returns how many."""
        ...

    async def credit(self, row: LedgerRow) -> int:
        """A grant or top-up; returns the balance after it."""
        ...

    async def balance(self, key_id: str) -> Balance | None: ...

    async def holds(self, key_id: str) -> list[HoldRow]: ...

    @property
    def instance_id(self) -> str:
        """This process's instance id (its holds carry it)."""
        ...

    async def instances(self) -> list[InstanceRow]:
        """Serving processes with a lease or with holds, and how many holds each has."""
        ...

    async def release_instance(self, instance_id: str, note: str) -> int:
        """Release every hold of an instance now; returns how many."""
        ...

    async def spent(self, key_id: str, since_hours: list[int]) -> list[int]:
        """Spend (settled plus held) in hourly buckets >= each given hour."""
        ...

    async def key_changed(self, key_id: str, revoked: bool = False) -> None:
        """Tell every instance that a key's policy changed or that it was revoked."""
        ...

    def on_key_changed(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key_id)` when another instance changes a key ("": maybe any key)."""
        ...

    async def flush(self) -> None:
        """Make every balance change so far durable in the ledger table."""
        ...

    async def audit(self) -> AuditReport: ...
