"""Verifications and calibration state in the embedded store (store/verifications.py), on the
analytics connection (autocommit: each statement commits on its own). The verification caps'
ledger (`admit_hold`, `settle_hold`) runs each operation whole in one BEGIN IMMEDIATE transaction
on the connection's own thread, so no other statement on the connection lands inside it and every
process sharing the file sees it all or not at all."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

import aiosqlite

from faregate.store.protocols import StoreUnavailable
from faregate.store.verifications import (
    COLUMNS,
    HoldAsk,
    Verdict,
    VerificationRow,
    as_params,
    cost_sql,
    from_params,
)

T = TypeVar("T")


class SQLiteVerifications:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def insert(self, row: VerificationRow) -> None:
        try:
            await self._conn.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (verification_id) DO NOTHING",
                as_params(row),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def recent(self, scope: str | None = None, limit: int = 50) -> list[VerificationRow]:
        where, params = ("WHERE scope = ?", (scope, limit)) if scope else ("", (limit,))
        try:
            rows = await self._conn.execute_fetchall(
                f"SELECT {COLUMNS} FROM verifications {where} ORDER BY id DESC LIMIT ?", params
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [from_params(tuple(r)) for r in rows]

    async def cost_nano(self, scope: str, cache: bool = False) -> int:
        try:
            rows = await self._conn.execute_fetchall(cost_sql("?", cache), (scope,))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return int(next(iter(rows))[0])

    async def load_state(self, scope: str, newer_than: int = 0) -> tuple[int, str] | None:
        try:
            rows = await self._conn.execute_fetchall(
                "SELECT version, state FROM calibration_state WHERE scope = ? AND version > ?",
                (scope, newer_than),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        for row in rows:
            return int(row[0]), str(row[1])
        return None

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        try:
            if expected == 0:
                cursor = await self._conn.execute(
                    "INSERT INTO calibration_state (scope, version, state, updated_at) VALUES (?, 1, ?, ?)"
                    " ON CONFLICT (scope) DO NOTHING",
                    (scope, state, now),
                )
            else:
                cursor = await self._conn.execute(
                    "UPDATE calibration_state SET version = version + 1, state = ?, updated_at = ?"
                    " WHERE scope = ? AND version = ?",
                    (state, now, scope, expected),
                )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return cursor.rowcount == 1

    # --- the verification caps' ledger ------------------------------------------------------------

    async def admit_hold(self, ask: HoldAsk) -> tuple[Verdict, Decimal]:
        return await self._in_transaction(lambda db: _admit(db, ask))

    async def settle_hold(self, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
        return await self._in_transaction(lambda db: _settle(db, scope, hold_id, day, cost))

    async def cap_ledger(self, scope: str, day: str) -> tuple[Decimal, dict[str, tuple[str, Decimal]]]:
        try:
            spent = await self._conn.execute_fetchall(
                "SELECT spent FROM verification_spend WHERE scope = ? AND day = ?", (scope, day)
            )
            holds = await self._conn.execute_fetchall(
                "SELECT hold_id, instance_id, amount FROM verification_holds WHERE scope = ?", (scope,)
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        total = sum((Decimal(str(r[0])) for r in spent), Decimal(0))
        return total, {str(r[0]): (str(r[1]), Decimal(str(r[2]))) for r in holds}

    async def _in_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` whole in one write transaction, on the connection's thread (one hop)."""

        def run() -> T:
            db = self._conn._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
            return result

        # aiosqlite's own queue onto its thread (its public methods use it the same way).
        on_thread: Callable[[Callable[[], T]], Awaitable[T]] = self._conn._execute
        try:
            return await on_thread(run)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc


def _held(db: sqlite3.Connection, scope: str) -> Decimal:
    rows = db.execute("SELECT amount FROM verification_holds WHERE scope = ?", (scope,)).fetchall()
    return sum((Decimal(str(r[0])) for r in rows), Decimal(0))


def _spent(db: sqlite3.Connection, scope: str, day: str) -> Decimal:
    row = db.execute(
        "SELECT spent FROM verification_spend WHERE scope = ? AND day = ?", (scope, day)
    ).fetchone()
    return Decimal(0) if row is None else Decimal(str(row[0]))


def _paused(db: sqlite3.Connection, scope: str, day: str) -> Decimal | None:
    """The cap a refusal paused the day at (None: not paused)."""
    row = db.execute(
        "SELECT paused_cap FROM verification_spend WHERE scope = ? AND day = ?", (scope, day)
    ).fetchone()
    return None if row is None or row[0] is None else Decimal(str(row[0]))


def _pause(db: sqlite3.Connection, scope: str, day: str, cap: Decimal) -> None:
    """The day paused at `cap` (or the higher cap it was paused at), its spend as it is."""
    paused = max(cap, _paused(db, scope, day) or cap)
    db.execute(
        "INSERT INTO verification_spend (scope, day, spent, paused_cap) VALUES (?, ?, '0', ?)"
        " ON CONFLICT (scope, day) DO UPDATE SET paused_cap = excluded.paused_cap",
        (scope, day, str(paused)),
    )


def _set_spent(db: sqlite3.Connection, scope: str, day: str, spent: Decimal) -> None:
    db.execute(
        "INSERT INTO verification_spend (scope, day, spent) VALUES (?, ?, ?)"
        " ON CONFLICT (scope, day) DO UPDATE SET spent = excluded.spent",
        (scope, day, str(spent)),
    )


def _admit(db: sqlite3.Connection, ask: HoldAsk) -> tuple[Verdict, Decimal]:
    rows = db.execute(
        "SELECT hold_id, instance_id, created_at FROM verification_holds WHERE scope = ?", (ask.scope,)
    ).fetchall()
    lapsed = [(str(r[0]),) for r in rows if ask.lapsed(str(r[1]), float(r[2]))]
    if lapsed:
        db.executemany("DELETE FROM verification_holds WHERE hold_id = ?", lapsed)
    spent, held = _spent(db, ask.scope, ask.day), _held(db, ask.scope)
    verdict = ask.verdict(spent, held, _paused(db, ask.scope, ask.day))
    if verdict == "refused":
        _pause(db, ask.scope, ask.day, ask.cap)
    elif verdict == "admitted":
        db.execute(
            "INSERT INTO verification_holds (hold_id, scope, instance_id, amount, day, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ask.hold_id, ask.scope, ask.instance, str(ask.amount), ask.day, ask.now),
        )
        held += ask.amount
    return verdict, held


def _settle(db: sqlite3.Connection, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
    gone = db.execute("DELETE FROM verification_holds WHERE hold_id = ?", (hold_id,)).rowcount
    if gone and cost:
        _set_spent(db, scope, day, _spent(db, scope, day) + cost)
    return _held(db, scope)
