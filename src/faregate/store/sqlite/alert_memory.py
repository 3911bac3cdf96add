"""The alerts that fired, in the embedded store (store/alert_memory.py), on the analytics
connection (autocommit: each statement commits on its own)."""

from __future__ import annotations

import sqlite3

import aiosqlite

from faregate.store.alert_memory import FiredAlert, alert_key
from faregate.store.protocols import StoreUnavailable


class SQLiteAlertMemory:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fired(self) -> list[FiredAlert]:
        try:
            rows = await self._conn.execute_fetchall("SELECT alert, state FROM alert_states")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [FiredAlert.from_row(row[0], row[1]) for row in rows]

    async def remember(self, alert: FiredAlert) -> None:
        try:
            await self._conn.execute(
                "INSERT INTO alert_states (alert, state) VALUES (?, ?)"
                " ON CONFLICT (alert) DO UPDATE SET state = excluded.state",
                (alert.alert, alert.state_json()),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def forget(self, rule: str, subject: str | None) -> None:
        try:
            await self._conn.execute("DELETE FROM alert_states WHERE alert = ?", (alert_key(rule, subject),))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
