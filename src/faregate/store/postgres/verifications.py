"""Verifications and calibration state on the shared PostgreSQL store (store/verifications.py):
the compare-and-set on `version` is what makes one writer per route across instances. The
verification caps' ledger (`admit_hold`, `settle_hold`) runs each operation in one transaction
that first takes a transaction-scoped advisory lock on the scope, so admissions and settlements of
one scope happen one at a time across every instance."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from faregate.store.postgres.errors import unavailable_errors
from faregate.store.verifications import (
    COLUMNS,
    HoldAsk,
    Verdict,
    VerificationRow,
    as_params,
    cost_sql,
    from_params,
)

# The advisory lock's first key: this ledger's (the second is the scope's hash).
LEDGER_LOCK = 0x46475648  # "FGVH"


class PostgresVerifications:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def insert(self, row: VerificationRow) -> None:
        marks = ", ".join(f"${i}" for i in range(1, 14))
        with unavailable_errors():
            await self._pool.execute(
                f"INSERT INTO verifications ({COLUMNS}) VALUES ({marks})"
                " ON CONFLICT (verification_id) DO NOTHING",
                *as_params(row),
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

    async def cost_nano(self, scope: str, cache: bool = False) -> int:
        with unavailable_errors():
            total = await self._pool.fetchval(cost_sql("$1", cache), scope)
        return int(total)

    async def load_state(self, scope: str, newer_than: int = 0) -> tuple[int, str] | None:
        with unavailable_errors():
            row = await self._pool.fetchrow(
                "SELECT version, state FROM calibration_state WHERE scope = $1 AND version > $2",
                scope,
                newer_than,
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

    # --- the verification caps' ledger ------------------------------------------------------------

    async def admit_hold(self, ask: HoldAsk) -> tuple[Verdict, Decimal]:
        with unavailable_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await _lock(conn, ask.scope)
                rows = await conn.fetch(
                    "SELECT hold_id, instance_id, created_at FROM verification_holds WHERE scope = $1",
                    ask.scope,
                )
                lapsed = [str(r[0]) for r in rows if ask.lapsed(str(r[1]), float(r[2]))]
                if lapsed:
                    await conn.execute(
                        "DELETE FROM verification_holds WHERE hold_id = ANY($1::text[])", lapsed
                    )
                spent, held = await _spent(conn, ask.scope, ask.day), await _held(conn, ask.scope)
                verdict = ask.verdict(spent, held, await _paused(conn, ask.scope, ask.day))
                if verdict == "refused":
                    await _pause(conn, ask.scope, ask.day, ask.cap)
                elif verdict == "admitted":
                    await conn.execute(
                        "INSERT INTO verification_holds"
                        " (hold_id, scope, instance_id, amount, day, created_at)"
                        " VALUES ($1, $2, $3, $4, $5, $6)",
                        ask.hold_id,
                        ask.scope,
                        ask.instance,
                        str(ask.amount),
                        ask.day,
                        ask.now,
                    )
                    held += ask.amount
        return verdict, held

    async def settle_hold(self, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
        with unavailable_errors():
            async with self._pool.acquire() as conn, conn.transaction():
                await _lock(conn, scope)
                gone = await conn.execute("DELETE FROM verification_holds WHERE hold_id = $1", hold_id)
                if str(gone).endswith(" 1") and cost:
                    await _set_spent(conn, scope, day, await _spent(conn, scope, day) + cost)
                return await _held(conn, scope)

    async def cap_ledger(self, scope: str, day: str) -> tuple[Decimal, dict[str, tuple[str, Decimal]]]:
        with unavailable_errors():
            async with self._pool.acquire() as conn:
                spent = await _spent(conn, scope, day)
                rows = await conn.fetch(
                    "SELECT hold_id, instance_id, amount FROM verification_holds WHERE scope = $1", scope
                )
        return spent, {str(r[0]): (str(r[1]), Decimal(str(r[2]))) for r in rows}


async def _lock(conn: Any, scope: str) -> None:
    """Until the transaction ends, no other admission or settlement of `scope` runs."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LEDGER_LOCK, scope)


async def _held(conn: Any, scope: str) -> Decimal:
    rows = await conn.fetch("SELECT amount FROM verification_holds WHERE scope = $1", scope)
    return sum((Decimal(str(r[0])) for r in rows), Decimal(0))


async def _spent(conn: Any, scope: str, day: str) -> Decimal:
    value = await conn.fetchval(
        "SELECT spent FROM verification_spend WHERE scope = $1 AND day = $2", scope, day
    )
    return Decimal(0) if value is None else Decimal(str(value))


async def _paused(conn: Any, scope: str, day: str) -> Decimal | None:
    """The cap a refusal paused the day at (None: not paused)."""
    value = await conn.fetchval(
        "SELECT paused_cap FROM verification_spend WHERE scope = $1 AND day = $2", scope, day
    )
    return None if value is None else Decimal(str(value))


async def _pause(conn: Any, scope: str, day: str, cap: Decimal) -> None:
    """The day paused at `cap` (or the higher cap it was paused at), its spend as it is."""
    paused = max(cap, await _paused(conn, scope, day) or cap)
    await conn.execute(
        "INSERT INTO verification_spend (scope, day, spent, paused_cap) VALUES ($1, $2, '0', $3)"
        " ON CONFLICT (scope, day) DO UPDATE SET paused_cap = excluded.paused_cap",
        scope,
        day,
        str(paused),
    )


async def _set_spent(conn: Any, scope: str, day: str, spent: Decimal) -> None:
    await conn.execute(
        "INSERT INTO verification_spend (scope, day, spent) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, day) DO UPDATE SET spent = excluded.spent",
        scope,
        day,
        str(spent),
    )
