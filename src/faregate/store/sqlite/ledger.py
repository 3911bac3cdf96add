"""Reservations in the embedded store: reserve, settle, release and expire as SQLite transactions.

Each operation runs whole inside a write transaction (BEGIN IMMEDIATE) on the store's
connection thread (SQLiteStore.run_in_transaction: in a savepoint of a transaction that
commits the operations queued with it). SQLite admits one writer at a time
across every process using the file, so the check ("the balance covers the worst case,
every budget window has room") and the write (balance down, hold row, ledger row, spend
bucket) can never be split by another reservation: the balance cannot be overspent however
many requests race for it. The functions below run on that thread, synchronously.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from faregate.store.holds import (
    LEASE_LAPSED_NOTE,
    BudgetCheck,
    HoldRow,
    InstanceRow,
    ReserveOutcome,
    hold_entry,
)
from faregate.store.protocols import LedgerRow
from faregate.store.sqlite.accounts import INSERT_LEDGER, ledger_params
from faregate.store.sqlite.store import SQLiteStore

T = TypeVar("T")

_HOLD_COLUMNS = "hold_id, key_id, request_id, amount_nano, tokens, hour, created_at, expires_at, instance_id"
# A hold is dead when it expired, or when the instance that made it has no live lease.
_DEAD = (
    "(expires_at <= ? OR (instance_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM instances i"
    " WHERE i.instance_id = holds.instance_id AND i.lease_until > ?)))"
)
_UPSERT_SPEND = (
    "INSERT INTO spend_buckets (key_id, hour, spent_nano) VALUES (?, ?, ?)"
    " ON CONFLICT (key_id, hour) DO UPDATE SET spent_nano = spent_nano + excluded.spent_nano"
)


def _hold(row: Sequence[Any]) -> HoldRow:
    return HoldRow(
        row[0], row[1], row[2], int(row[3]), int(row[4]), int(row[5]), float(row[6]), float(row[7]), row[8]
    )


def _write(conn: sqlite3.Connection, row: LedgerRow) -> None:
    """One ledger row and the balance move it makes, together (inside the caller's transaction)."""
    conn.execute(INSERT_LEDGER, ledger_params(row))
    conn.execute(
        "UPDATE accounts SET balance_nano = balance_nano + ?, updated_at = ? WHERE key_id = ?",
        (row.amount_nano, row.created_at, row.key_id),
    )


def _held(conn: sqlite3.Connection, key_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(amount_nano), 0) FROM holds WHERE key_id = ?", (key_id,)
    ).fetchone()
    return int(row[0])


def _spent(conn: sqlite3.Connection, key_id: str, since_hours: Sequence[int]) -> list[int]:
    if not since_hours:
        return []
    sums = ", ".join("COALESCE(SUM(CASE WHEN hour >= ? THEN spent_nano END), 0)" for _ in since_hours)
    row = conn.execute(
        f"SELECT {sums} FROM spend_buckets WHERE key_id = ? AND hour >= ?",
        (*since_hours, key_id, min(since_hours)),
    ).fetchone()
    return [int(value) for value in row]


def _close(
    conn: sqlite3.Connection, hold: HoldRow, cost_nano: int | None, note: str | None, now: float
) -> None:
    """Settle (with a cost) or release (without) a hold already removed from `holds`."""
    change = hold.amount_nano - (cost_nano or 0)
    _write(
        conn,
        LedgerRow(
            hold_entry(hold.hold_id, "close"),
            hold.key_id,
            "settlement" if cost_nano is not None else "release",
            change,
            now,
            cost_nano=cost_nano,
            hold_id=hold.hold_id,
            request_id=hold.request_id,
            hour=hold.hour,
            note=note,
        ),
    )
    if change:
        conn.execute(_UPSERT_SPEND, (hold.key_id, hold.hour, -change))


def _take(conn: sqlite3.Connection, hold_id: str) -> HoldRow | None:
    row = conn.execute(
        f"DELETE FROM holds WHERE hold_id = ? RETURNING {_HOLD_COLUMNS}", (hold_id,)
    ).fetchone()
    return None if row is None else _hold(row)


def _expire(conn: sqlite3.Connection, now: float, *, key_id: str | None = None, limit: int = 500) -> int:
    """Release dead holds: expired ones, and those of instances whose lease has lapsed."""
    where, params = ("key_id = ? AND ", (key_id,)) if key_id is not None else ("", ())
    rows = conn.execute(
        f"SELECT {_HOLD_COLUMNS} FROM holds WHERE {where}{_DEAD} ORDER BY expires_at LIMIT ?",
        (*params, now, now, limit),
    ).fetchall()
    for hold in map(_hold, rows):
        conn.execute("DELETE FROM holds WHERE hold_id = ?", (hold.hold_id,))
        note = "expired: not settled in time" if hold.expires_at <= now else LEASE_LAPSED_NOTE
        _close(conn, hold, None, note, now)
    return len(rows)


def _forget_gone_instances(conn: sqlite3.Connection, now: float) -> None:
    """Instances whose lease is over and that hold nothing: a restart is a new instance, so these
    never come back (one that only stalled inserts itself again at its next renewal). Redis's
    sweep forgets them too; kept, they were listed in /admin/instances for good."""
    conn.execute(
        "DELETE FROM instances WHERE lease_until <= ?"
        " AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = instances.instance_id)",
        (now,),
    )


def _release_instance(conn: sqlite3.Connection, instance_id: str, note: str, now: float) -> int:
    rows = conn.execute(
        f"DELETE FROM holds WHERE instance_id = ? RETURNING {_HOLD_COLUMNS}", (instance_id,)
    ).fetchall()
    for hold in map(_hold, rows):
        _close(conn, hold, None, note, now)
    conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
    return len(rows)


class SQLiteLedger:
    def __init__(self, store: SQLiteStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` (the callables below, composed) in one write transaction."""
        return await self._store.run_in_transaction(work)

    async def reserve(
        self,
        key_id: str,
        hold_id: str,
        request_id: str | None,
        amount_nano: int,
        tokens: int,
        hour: int,
        budgets: Sequence[BudgetCheck],
        ttl_s: float,
        instance_id: str | None = None,
    ) -> ReserveOutcome:
        work = self.reserving(
            key_id, hold_id, request_id, amount_nano, tokens, hour, budgets, ttl_s, instance_id
        )
        return await self.run(work)

    def reserving(
        self,
        key_id: str,
        hold_id: str,
        request_id: str | None,
        amount_nano: int,
        tokens: int,
        hour: int,
        budgets: Sequence[BudgetCheck],
        ttl_s: float,
        instance_id: str | None = None,
    ) -> Callable[[sqlite3.Connection], ReserveOutcome]:
        """The reservation as work for a write transaction (`run`, or a caller's own)."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> ReserveOutcome:
            # Holds left by a dead process are released before they are counted against the
            # balance, so a crash never locks a key's money beyond its instance's lease.
            _expire(conn, now, key_id=key_id)
            found = conn.execute(
                "SELECT a.balance_nano, k.revoked_at FROM accounts a JOIN api_keys k ON k.id = a.key_id"
                " WHERE a.key_id = ?",
                (key_id,),
            ).fetchone()
            if found is None:
                return ReserveOutcome("no_account")
            balance = int(found[0])
            if found[1] is not None:
                return ReserveOutcome("revoked", balance)
            if balance < amount_nano:
                return ReserveOutcome("credits", balance, _held(conn, key_id))
            spent = _spent(conn, key_id, [b.since_hour for b in budgets])
            for index, (budget, total) in enumerate(zip(budgets, spent, strict=True)):
                if total + amount_nano > budget.limit_nano:
                    return ReserveOutcome("budget", balance, _held(conn, key_id), index, total)
            conn.execute(
                f"INSERT INTO holds ({_HOLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hold_id, key_id, request_id, amount_nano, tokens, hour, now, now + ttl_s, instance_id),
            )
            reservation = LedgerRow(
                hold_entry(hold_id, "res"),
                key_id,
                "reservation",
                -amount_nano,
                now,
                hold_id=hold_id,
                request_id=request_id,
                hour=hour,
            )
            _write(conn, reservation)
            conn.execute(_UPSERT_SPEND, (key_id, hour, amount_nano))
            return ReserveOutcome("ok", balance - amount_nano)

        return work

    async def settle(
        self, key_id: str, hold_id: str, request_id: str | None, hour: int, cost_nano: int
    ) -> bool:
        """Charge the cost and give back the rest of the hold. False if the hold was already gone
        (expired): the cost is then charged on its own, so nothing spent goes unbilled."""
        return await self.run(self.settling(key_id, hold_id, request_id, hour, cost_nano))

    def settling(
        self, key_id: str, hold_id: str, request_id: str | None, hour: int, cost_nano: int
    ) -> Callable[[sqlite3.Connection], bool]:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> bool:
            hold = _take(conn, hold_id)
            if hold is not None:
                _close(conn, hold, cost_nano, None, now)
                return True
            # Already settled (a retried call): nothing more to charge.
            done = conn.execute(
                "SELECT 1 FROM ledger WHERE entry_id IN (?, ?) AND kind = 'settlement'",
                (hold_entry(hold_id, "close"), hold_entry(hold_id, "late")),
            ).fetchone()
            if cost_nano > 0 and done is None:
                late = LedgerRow(
                    hold_entry(hold_id, "late"),
                    key_id,
                    "settlement",
                    -cost_nano,
                    now,
                    cost_nano=cost_nano,
                    hold_id=hold_id,
                    request_id=request_id,
                    hour=hour,
                    note="late: the hold had expired",
                )
                _write(conn, late)
                conn.execute(_UPSERT_SPEND, (key_id, hour, cost_nano))
            return False

        return work

    async def release(self, hold_id: str) -> bool:
        return await self.run(self.releasing(hold_id))

    def releasing(self, hold_id: str) -> Callable[[sqlite3.Connection], bool]:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> bool:
            hold = _take(conn, hold_id)
            if hold is not None:
                _close(conn, hold, None, None, now)
            return hold is not None

        return work

    async def sweep(self, limit: int = 500) -> int:
        """Release holds past their expiry or whose instance's lease lapsed (their process died or
        lost track of them), then forget the instances gone with nothing left to release."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> int:
            released = _expire(conn, now, limit=limit)
            _forget_gone_instances(conn, now)
            return released

        return await self._store.run_in_transaction(work)

    # -- instance leases ------------------------------------------------------------------------

    async def renew_lease(
        self, instance_id: str, lease_s: float, started_at: float, host: str, pid: int
    ) -> None:
        now = self._clock()
        await self._store.run_in_transaction(
            lambda conn: conn.execute(
                "INSERT INTO instances (instance_id, started_at, lease_until, host, pid)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_id)"
                " DO UPDATE SET lease_until = excluded.lease_until",
                (instance_id, started_at, now + lease_s, host, pid),
            )
        )

    async def end_lease(self, instance_id: str) -> None:
        """A clean stop: the lease ends now (any hold still left is released by the next sweep)."""
        await self._store.run_in_transaction(
            lambda conn: conn.execute(
                "UPDATE instances SET lease_until = 0 WHERE instance_id = ?", (instance_id,)
            )
        )

    async def instances(self) -> list[InstanceRow]:
        rows = await self._store._conn.execute_fetchall(
            "SELECT i.instance_id, i.lease_until,"
            " (SELECT COUNT(*) FROM holds h WHERE h.instance_id = i.instance_id),"
            " i.started_at, i.host, i.pid FROM instances i"
            " UNION ALL SELECT h.instance_id, NULL, COUNT(*), NULL, '', 0 FROM holds h"
            " WHERE h.instance_id IS NOT NULL AND h.instance_id NOT IN (SELECT instance_id FROM instances)"
            " GROUP BY h.instance_id ORDER BY 4 DESC"
        )
        return [
            InstanceRow(r[0], None if r[1] in (None, 0) else float(r[1]), int(r[2]), r[3], r[4], int(r[5]))
            for r in rows
        ]

    async def release_instance(self, instance_id: str, note: str) -> int:
        now = self._clock()
        return await self._store.run_in_transaction(
            lambda conn: _release_instance(conn, instance_id, note, now)
        )

    async def prune_spend(self, before_hour: int) -> None:
        await self._store.run_in_transaction(
            lambda conn: conn.execute("DELETE FROM spend_buckets WHERE hour < ?", (before_hour,))
        )

    # -- reads (no transaction: WAL readers see the last commit) --------------------------------

    async def holds(self, key_id: str | None = None) -> list[HoldRow]:
        where, params = (" WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())
        rows = await self._store._conn.execute_fetchall(
            f"SELECT {_HOLD_COLUMNS} FROM holds{where} ORDER BY created_at", params
        )
        return [_hold(row) for row in rows]

    async def spent(self, key_id: str, since_hours: Sequence[int]) -> list[int]:
        return await self._store.run_read(lambda conn: _spent(conn, key_id, since_hours))

    async def held(self, key_id: str) -> int:
        return await self._store.run_read(lambda conn: _held(conn, key_id))

    async def dangling(self) -> list[str]:
        """Audit: holds whose ledger rows disagree (a hold without its reservation row, a closed
        hold still present, or an open reservation with no hold)."""
        rows = await self._store._conn.execute_fetchall(
            "SELECT h.hold_id, 'hold without a reservation row' FROM holds h"
            " WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.entry_id = h.hold_id || ':res')"
            " UNION ALL SELECT h.hold_id, 'hold already closed in the ledger' FROM holds h"
            " WHERE EXISTS (SELECT 1 FROM ledger l WHERE l.entry_id = h.hold_id || ':close')"
            " UNION ALL SELECT l.hold_id, 'reservation neither closed nor held' FROM ledger l"
            " WHERE l.kind = 'reservation' AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.hold_id = l.hold_id)"
            " AND NOT EXISTS (SELECT 1 FROM ledger c WHERE c.entry_id = l.hold_id || ':close')"
        )
        return [f"{row[0]}: {row[1]}" for row in rows]
