"""The alerts that fired, in the shared store (store/alert_memory.py), on the analytics pool."""

from __future__ import annotations

from typing import Any

from faregate.store.alert_memory import FiredAlert, alert_key
from faregate.store.postgres.errors import unavailable_errors


class PostgresAlertMemory:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def fired(self) -> list[FiredAlert]:
        with unavailable_errors():
            rows = await self._pool.fetch("SELECT alert, state FROM alert_states")
        return [FiredAlert.from_row(row[0], row[1]) for row in rows]

    async def remember(self, alert: FiredAlert) -> None:
        with unavailable_errors():
            await self._pool.execute(
                "INSERT INTO alert_states (alert, state) VALUES ($1, $2)"
                " ON CONFLICT (alert) DO UPDATE SET state = excluded.state",
                alert.alert,
                alert.state_json(),
            )

    async def forget(self, rule: str, subject: str | None) -> None:
        with unavailable_errors():
            await self._pool.execute("DELETE FROM alert_states WHERE alert = $1", alert_key(rule, subject))
