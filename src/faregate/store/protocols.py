"""The store interface: what the rest of the gateway may ask of a database.

It is kept to domain operations (not raw SQL) so that SQLite (store/sqlite/) and PostgreSQL
(store/postgres/) sit behind the same Protocols, each with its own dialect. Consumers depend on
the narrowest part they use: the key store on `KeyTable`, the record writer on `RecordTable`,
the money side on `AccountTable` (a store's `accounts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from faregate.types import RequestRecord

# The columns of a key's policy (`AccountTable.set_policy` writes those it is given).
POLICY_COLUMNS = frozenset({"requests_per_minute", "tokens_per_minute", "max_request_nano", "budgets"})
PolicyValues = Mapping[str, int | str | None]


def policy_columns(changes: PolicyValues) -> list[str]:
    """The columns `changes` sets, checked: they are written into the statement's text."""
    unknown = set(changes) - POLICY_COLUMNS
    if unknown:
        raise ValueError(f"not policy columns: {sorted(unknown)}")
    return sorted(changes)


class DuplicateError(Exception):
    """A unique constraint refused the write."""


class BalanceCapExceeded(Exception):
    """A credit would take a balance, counting what its open holds will give back, past the cap
    it was given: nothing was applied."""

    def __init__(self, balance_nano: int, held_nano: int) -> None:
        super().__init__(f"balance {balance_nano} plus {held_nano} held")
        self.balance_nano = balance_nano
        self.held_nano = held_nano


class UnknownLedgerEntry(LookupError):
    """A ledger page asked for the rows after an entry the key's ledger does not have."""


class StoreUnavailable(Exception):
    """The store could not be written or read right now (locked, disk full, I/O error).

    Distinct from a bad row: the caller may retry the same write later and expect it to work.
    """


class OutcomeUnknown(StoreUnavailable):
    """The store took a write but gave no answer in time (it froze, or the network parted): the
    write may still be applied when it answers again, so the caller undoes it, idempotently."""


@dataclass(slots=True, frozen=True)
class KeyRow:
    """An API key as stored. The raw key is never stored: only its SHA-256 hex digest."""

    id: str
    name: str
    prefix: str
    key_hash: str
    premium: bool
    created_at: float
    revoked_at: float | None = None


class KeyTable(Protocol):
    async def insert_key(
        self, row: KeyRow, credits_nano: int = 0, policy: PolicyValues | None = None
    ) -> None:
        """Insert the key and its account (with the policy columns in `policy`, as
        AccountTable.set_policy writes them), with a `grant` ledger row when credits_nano > 0, in
        one transaction. Raises DuplicateError if the id or the hash is taken."""
        ...

    async def find_key(self, key_hash: str) -> KeyRow | None:
        """The key with this hash, revoked or not."""
        ...

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRow]:
        """Oldest first."""
        ...

    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Revoke the key with this id. False if there is none or it is already revoked."""
        ...


class RecordTable(Protocol):
    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        """Insert in one transaction; a request_id already stored is skipped, never duplicated.
        Returns how many rows were inserted. Raises StoreUnavailable when the batch may be retried."""
        ...

    async def get_record(self, request_id: str) -> RequestRecord | None: ...

    async def count_records(self) -> int: ...


LedgerKind = Literal["grant", "topup", "reservation", "settlement", "release"]
LEDGER_KINDS: tuple[LedgerKind, ...] = ("grant", "topup", "reservation", "settlement", "release")


@dataclass(slots=True, frozen=True)
class LedgerRow:
    """One balance change, in nano-dollars (positive: the balance grew).

    A reservation is negative (the worst case is set aside); its settlement gives back what was
    not spent (reserved - cost, which is negative when the cost overran the hold); a release
    gives back all of it. `hour` is the spend bucket the change counts in (budgets)."""

    entry_id: str
    key_id: str
    kind: LedgerKind
    amount_nano: int
    created_at: float
    cost_nano: int | None = None
    hold_id: str | None = None
    request_id: str | None = None
    hour: int | None = None
    note: str | None = None
    # The Redis data set the change was made in (shared stores only; see store.redis.ledger).
    epoch: str | None = None


@dataclass(slots=True, frozen=True)
class AccountRow:
    """A key's account: its balance and its own spending policy (None: the default)."""

    key_id: str
    balance_nano: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_request_nano: int | None
    budgets: str
    revoked: bool = False


@dataclass(slots=True, frozen=True)
class AuditRow:
    key_id: str
    balance_nano: int
    ledger_nano: int
    entries: int


class AccountTable(Protocol):
    async def get_key(self, key_id: str) -> KeyRow | None: ...

    async def get_account(self, key_id: str) -> AccountRow | None: ...

    async def set_policy(self, key_id: str, changes: PolicyValues, name: str | None = None) -> bool:
        """Write the policy columns in `changes` (POLICY_COLUMNS; budgets as JSON text) and keep
        the others as stored, in one statement: two changes of different fields at once both
        stay. Given a `name`, the key is renamed in the same transaction (a failure changes
        neither). False if the key has no account."""
        ...

    async def set_key_name(self, key_id: str, name: str) -> bool: ...

    async def ledger_rows(self, key_id: str, limit: int, after: str | None = None) -> list[LedgerRow]:
        """The newest `limit` rows, newest first; with `after` (an entry id of this key's), the
        newest `limit` rows older than that entry (UnknownLedgerEntry if the key has none such)."""
        ...

    async def audit_rows(self) -> list[AuditRow]:
        """Every account's stored balance next to the sum of its ledger rows."""
        ...


class Store(KeyTable, RecordTable, Protocol):
    """A store: keys and records itself, accounts and the ledger in its `accounts` part (the same
    database, so a key and its account are created in one transaction)."""

    @property
    def accounts(self) -> AccountTable: ...

    async def close(self) -> None: ...
