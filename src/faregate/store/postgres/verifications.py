"""Verifications and calibration state on the shared PostgreSQL store (store/verifications.py):
the compare-and-set on `version` is what makes one writer per route across instances."""

from __future__ import annotations

from typing import Any

from faregate.store.postgres.errors import unavailable_errors
from faregate.store.verifications import COLUMNS, VerificationRow, as_params, from_params


class PostgresVerifications:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def insert(self, row: VerificationRow) -> None:
        marks = ", ".join(f"${i}" for i in range(1, 13))
        with unavailable_errors():
            await self._pool.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES ({marks})", *as_params(row)
            )

    async def recent(self, scope: str | None = None, limit: int = 50) -> list[VerificationRow]:
        with unavailable_errors():
            if scope:
                rows = await self._pool.fetch(
                    f"SELECT {COLUMNS} FROM verifications WHERE scope = $1 ORDER BY id DESC LIMIT $2",
                    scope,
                    limit,
                )
            else:
                rows = await self._pool.fetch(
                    f"SELECT {COLUMNS} FROM verifications ORDER BY id DESC LIMIT $1", limit
                )
        return [from_params(tuple(r)) for r in rows]

    async def load_state(self, scope: str) -> tuple[int, str] | None:
        with unavailable_errors():
            row = await self._pool.fetchrow(
                "SELECT version, state FROM calibration_state WHERE scope = $1", scope
            )
        return None if row is None else (int(row[0]), str(row[1]))

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        with unavailable_errors():
            if expected == 0:
                result = await self._pool.execute(
                    "INSERT INTO calibration_state (scope, version, state, updated_at) VALUES ($1, 1, $2, $3)"
                    " ON CONFLICT (scope) DO NOTHING",
                    scope,
                    state,
                    now,
                )
            else:
                result = await self._pool.execute(
                    "UPDATE calibration_state SET version = version + 1, state = $1, updated_at = $2"
                    " WHERE scope = $3 AND version = $4",
                    state,
                    now,
                    scope,
                    expected,
                )
        # asyncpg returns the command tag: "INSERT 0 1" / "UPDATE 1".
        return str(result).endswith(" 1")
