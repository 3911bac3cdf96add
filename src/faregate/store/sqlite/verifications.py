"""Verifications and calibration state in the embedded store (store/verifications.py), on the
analytics connection (autocommit: each statement commits on its own)."""

from __future__ import annotations

import sqlite3

import aiosqlite

from faregate.store.protocols import StoreUnavailable
from faregate.store.verifications import COLUMNS, VerificationRow, as_params, from_params


class SQLiteVerifications:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def insert(self, row: VerificationRow) -> None:
        try:
            await self._conn.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    async def load_state(self, scope: str) -> tuple[int, str] | None:
        try:
            rows = await self._conn.execute_fetchall(
                "SELECT version, state FROM calibration_state WHERE scope = ?", (scope,)
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
