"""Accounts and the ledger in the embedded store: the AccountTable part of SQLiteStore.

An object the store holds (`SQLiteStore.accounts`), not a base class: it shares the store's one
connection and its write transaction, so keys, balances and ledger rows still change together,
while this file keeps the money tables apart from keys and records. Reservations themselves
(the hot path) are in `ledger`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite

from faregate.store.holds import new_entry_id
from faregate.store.protocols import (
    AccountRow,
    AuditRow,
    BalanceCapExceeded,
    KeyRow,
    LedgerRow,
    PolicyValues,
    UnknownLedgerEntry,
    policy_columns,
)

LEDGER_COLUMNS = "entry_id, key_id, kind, amount_nano, cost_nano, hold_id, request_id, hour, created_at, note"
INSERT_LEDGER = f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def ledger_params(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.entry_id,
        row.key_id,
        row.kind,
        row.amount_nano,
        row.cost_nano,
        row.hold_id,
        row.request_id,
        row.hour,
        row.created_at,
        row.note,
    )


def ledger_row(row: Sequence[Any]) -> LedgerRow:
    return LedgerRow(
        entry_id=row[0],
        key_id=row[1],
        kind=row[2],
        amount_nano=int(row[3]),
        cost_nano=None if row[4] is None else int(row[4]),
        hold_id=row[5],
        request_id=row[6],
        hour=None if row[7] is None else int(row[7]),
        created_at=float(row[8]),
        note=row[9],
    )


class SQLiteAccountTable:
    """Implements faregate.store.protocols.AccountTable on the store's connection, writing inside
    the store's transaction (`transaction`: BEGIN IMMEDIATE under the store's write lock)."""

    def __init__(
        self, conn: aiosqlite.Connection, transaction: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self._conn = conn
        self._transaction = transaction

    async def _write_ledger(self, row: LedgerRow) -> None:
        """Append one row and move the balance by its amount: call inside a transaction."""
        await self._conn.execute(INSERT_LEDGER, ledger_params(row))
        await self._conn.execute(
            "UPDATE accounts SET balance_nano = balance_nano + ?, updated_at = ? WHERE key_id = ?",
            (row.amount_nano, row.created_at, row.key_id),
        )

    async def open_account(self, row: KeyRow, credits_nano: int, policy: PolicyValues | None = None) -> None:
        """The key's account (with its policy, and its grant): call inside the transaction that
        inserts the key."""
        policy = policy or {}
        columns = policy_columns(policy)
        names = "".join(f", {column}" for column in columns)
        values = ", ?" * len(columns)
        await self._conn.execute(
            f"INSERT INTO accounts (key_id, balance_nano, updated_at{names}) VALUES (?, 0, ?{values})",
            (row.id, row.created_at, *(policy[column] for column in columns)),
        )
        if credits_nano > 0:
            await self._write_ledger(
                LedgerRow(
                    new_entry_id("grant"), row.id, "grant", credits_nano, row.created_at, note="new key"
                )
            )

    async def get_key(self, key_id: str) -> KeyRow | None:
        rows = await self._conn.execute_fetchall(
            "SELECT id, name, prefix, key_hash, premium, created_at, revoked_at FROM api_keys WHERE id = ?",
            (key_id,),
        )
        for row in rows:
            return KeyRow(
                row[0],
                row[1],
                row[2],
                row[3],
                bool(row[4]),
                float(row[5]),
                None if row[6] is None else float(row[6]),
            )
        return None

    async def get_account(self, key_id: str) -> AccountRow | None:
        rows = await self._conn.execute_fetchall(
            "SELECT a.key_id, a.balance_nano, a.requests_per_minute, a.tokens_per_minute, a.max_request_nano,"
            " a.budgets, k.revoked_at IS NOT NULL"
            " FROM accounts a JOIN api_keys k ON k.id = a.key_id WHERE a.key_id = ?",
            (key_id,),
        )
        for row in rows:
            return AccountRow(row[0], int(row[1]), row[2], row[3], row[4], row[5], bool(row[6]))
        return None

    async def set_policy(self, key_id: str, changes: PolicyValues, name: str | None = None) -> bool:
        columns = policy_columns(changes)
        sets = "".join(f"{column} = ?, " for column in columns)
        async with self._transaction():
            if name is not None:
                await self._conn.execute("UPDATE api_keys SET name = ? WHERE id = ?", (name, key_id))
            cursor = await self._conn.execute(
                f"UPDATE accounts SET {sets}updated_at = ? WHERE key_id = ?",
                (*(changes[column] for column in columns), time.time(), key_id),
            )
            changed = int(cursor.rowcount) > 0
        return changed

    async def set_key_name(self, key_id: str, name: str) -> bool:
        async with self._transaction():
            cursor = await self._conn.execute("UPDATE api_keys SET name = ? WHERE id = ?", (name, key_id))
            changed = int(cursor.rowcount) > 0
        return changed

    async def credit(self, row: LedgerRow, cap_nano: int | None = None) -> int:
        """A grant or top-up: the ledger row and the balance move together. Returns the balance.
        Raises BalanceCapExceeded, applying nothing, if the balance plus the key's open holds
        would pass `cap_nano`."""
        async with self._transaction():
            if cap_nano is not None:
                found = await self._conn.execute_fetchall(
                    "SELECT balance_nano, (SELECT COALESCE(SUM(amount_nano), 0) FROM holds WHERE key_id = ?)"
                    " FROM accounts WHERE key_id = ?",
                    (row.key_id, row.key_id),
                )
                for balance, held in found:
                    if int(balance) + int(held) + row.amount_nano > cap_nano:
                        raise BalanceCapExceeded(int(balance), int(held))
            await self._write_ledger(row)
            rows = await self._conn.execute_fetchall(
                "SELECT balance_nano FROM accounts WHERE key_id = ?", (row.key_id,)
            )
        return int(next(iter(rows))[0])

    async def ledger_rows(self, key_id: str, limit: int, after: str | None = None) -> list[LedgerRow]:
        before = None
        if after is not None:
            found = await self._conn.execute_fetchall(
                "SELECT id FROM ledger WHERE key_id = ? AND entry_id = ?", (key_id, after)
            )
            before = next((int(row[0]) for row in found), None)
            if before is None:
                raise UnknownLedgerEntry(after)
        rows = await self._conn.execute_fetchall(
            f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE key_id = ? AND (? IS NULL OR id < ?)"
            " ORDER BY id DESC LIMIT ?",
            (key_id, before, before, limit),
        )
        return [ledger_row(row) for row in rows]

    async def audit_rows(self) -> list[AuditRow]:
        rows = await self._conn.execute_fetchall(
            "SELECT a.key_id, a.balance_nano, COALESCE(l.total, 0), COALESCE(l.entries, 0) FROM accounts a"
            " LEFT JOIN (SELECT key_id, SUM(amount_nano) AS total, COUNT(*) AS entries FROM ledger"
            " GROUP BY key_id) l ON l.key_id = a.key_id ORDER BY a.key_id"
        )
        return [AuditRow(row[0], int(row[1]), int(row[2]), int(row[3])) for row in rows]

    async def ledger_keys_without_account(self) -> list[str]:
        rows = await self._conn.execute_fetchall(
            "SELECT DISTINCT key_id FROM ledger WHERE key_id NOT IN (SELECT key_id FROM accounts)"
        )
        return [str(row[0]) for row in rows]
