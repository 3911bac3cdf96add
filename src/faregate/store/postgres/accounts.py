"""Accounts and the ledger in PostgreSQL: the AccountTable part of PostgresStore (an object the
store holds, `PostgresStore.accounts`, on the same pool).

Balances change here in two ways only, both in one transaction with their ledger rows:
a new key's grant, and `apply_ledger`, which writes a batch of ledger rows shipped from
Redis (every reservation, settlement, release and top-up). Each row has a unique entry id
and only rows actually inserted move a balance, so a batch shipped twice (a shipper died
between commit and acknowledgement) changes nothing the second time: the stored balance
always equals the sum of the account's rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from faregate.store.holds import hold_entry, new_entry_id
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.pool import REQUEST_READ_TIMEOUT_S, answered_within
from faregate.store.protocols import (
    AccountRow,
    AuditRow,
    KeyRow,
    LedgerRow,
    PolicyValues,
    UnknownLedgerEntry,
    policy_columns,
)

KEY_COLUMNS = "id, name, prefix, key_hash, premium, created_at, revoked_at"
_LEDGER_COLUMNS = (
    "entry_id, key_id, kind, amount_nano, cost_nano, hold_id, request_id, hour, created_at, note, epoch"
)
# One statement: insert the rows not seen before, track reservations still open, and move each
# balance by the sum of its newly inserted rows.
_APPLY = f"""
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[],
                         $8::int8[], $9::float8[], $10::text[], $11::text[])
        AS b({_LEDGER_COLUMNS})
), ins AS (
    INSERT INTO ledger ({_LEDGER_COLUMNS}) SELECT {_LEDGER_COLUMNS} FROM batch
    ON CONFLICT (entry_id) DO NOTHING
    RETURNING {_LEDGER_COLUMNS}
), opened AS (
    INSERT INTO open_holds (hold_id, key_id, amount_nano, hour, request_id, epoch)
    SELECT i.hold_id, i.key_id, -i.amount_nano, i.hour, i.request_id, i.epoch FROM ins i
    WHERE i.kind = 'reservation' AND NOT EXISTS (SELECT 1 FROM ins c WHERE c.entry_id = i.hold_id || ':close')
    ON CONFLICT (hold_id) DO NOTHING
), closed AS (
    DELETE FROM open_holds o USING ins c WHERE o.hold_id = c.hold_id AND c.entry_id = c.hold_id || ':close'
), moved AS (
    UPDATE accounts a SET balance_nano = a.balance_nano + s.total, updated_at = s.at
    FROM (SELECT key_id, SUM(amount_nano) AS total, MAX(created_at) AS at FROM ins GROUP BY key_id) s
    WHERE a.key_id = s.key_id
)
SELECT COUNT(*) FROM ins
"""
_RETRIES = 5


@dataclass(slots=True, frozen=True)
class LoadedAccount:
    """What Redis needs to take over a key's account: its balance, whether it is revoked, and
    its hourly spend for budgets."""

    balance_nano: int
    revoked: bool
    spend: list[tuple[int, int]]
    orphans_released: int


def _ledger_row(row: Any) -> LedgerRow:
    return LedgerRow(
        entry_id=row["entry_id"],
        key_id=row["key_id"],
        kind=row["kind"],
        amount_nano=int(row["amount_nano"]),
        created_at=float(row["created_at"]),
        cost_nano=None if row["cost_nano"] is None else int(row["cost_nano"]),
        hold_id=row["hold_id"],
        request_id=row["request_id"],
        hour=None if row["hour"] is None else int(row["hour"]),
        note=row["note"],
        epoch=row["epoch"],
    )


def _columns(rows: Sequence[LedgerRow]) -> list[list[Any]]:
    return [
        [r.entry_id for r in rows],
        [r.key_id for r in rows],
        [r.kind for r in rows],
        [r.amount_nano for r in rows],
        [r.cost_nano for r in rows],
        [r.hold_id for r in rows],
        [r.request_id for r in rows],
        [r.hour for r in rows],
        [r.created_at for r in rows],
        [r.note for r in rows],
        [r.epoch for r in rows],
    ]


def key_row(row: Any) -> KeyRow:
    return KeyRow(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        premium=bool(row["premium"]),
        created_at=float(row["created_at"]),
        revoked_at=None if row["revoked_at"] is None else float(row["revoked_at"]),
    )


class PostgresAccountTable:
    """Implements faregate.store.protocols.AccountTable over the store's pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def open_account(
        self, conn: Any, row: KeyRow, credits_nano: int, policy: PolicyValues | None = None
    ) -> None:
        """The key's account (with its policy, and its grant), on `conn`, inside the transaction
        inserting the key."""
        policy = policy or {}
        columns = policy_columns(policy)
        names = "".join(f", {column}" for column in columns)
        values = "".join(f", ${i}" for i in range(3, 3 + len(columns)))
        await conn.execute(
            f"INSERT INTO accounts (key_id, balance_nano, updated_at{names}) VALUES ($1, 0, $2{values})",
            row.id,
            row.created_at,
            *(policy[column] for column in columns),
        )
        if credits_nano > 0:
            grant = LedgerRow(
                new_entry_id("grant"), row.id, "grant", credits_nano, row.created_at, note="new key"
            )
            await conn.fetchval(_APPLY, *_columns([grant]))

    async def get_key(self, key_id: str) -> KeyRow | None:
        # A key's own GET /v1/me waits for it, as a request waits for its account's policy.
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id),
            )
        return None if row is None else key_row(row)

    async def set_key_name(self, key_id: str, name: str) -> bool:
        with unavailable_errors():
            status = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.execute("UPDATE api_keys SET name = $1 WHERE id = $2", name, key_id),
            )
        return str(status).endswith(" 1")

    async def get_account(self, key_id: str) -> AccountRow | None:
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetchrow(
                    "SELECT a.key_id, a.balance_nano, a.requests_per_minute, a.tokens_per_minute,"
                    " a.max_request_nano, a.budgets, k.revoked_at IS NOT NULL AS revoked"
                    " FROM accounts a JOIN api_keys k ON k.id = a.key_id WHERE a.key_id = $1",
                    key_id,
                ),
            )
        if row is None:
            return None
        return AccountRow(
            row["key_id"],
            int(row["balance_nano"]),
            row["requests_per_minute"],
            row["tokens_per_minute"],
            None if row["max_request_nano"] is None else int(row["max_request_nano"]),
            row["budgets"],
            bool(row["revoked"]),
        )

    async def hold_settled(self, hold_id: str) -> bool:
        """Whether the ledger has a settlement of `hold_id` (its close, or a late charge). A kept
        settlement's retry waits for it (rarely: only for a hold Redis no longer has), so it is
        bounded as a request's reads are; a timeout is an outage and the retry comes again."""
        entries = [hold_entry(hold_id, "close"), hold_entry(hold_id, "late")]
        with unavailable_errors():
            return bool(
                await answered_within(
                    REQUEST_READ_TIMEOUT_S,
                    self._pool,
                    lambda conn: conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM ledger WHERE entry_id = ANY($1::text[])"
                        " AND kind = 'settlement')",
                        entries,
                    ),
                )
            )

    async def set_policy(self, key_id: str, changes: PolicyValues, name: str | None = None) -> bool:
        columns = policy_columns(changes)
        sets = "".join(f"{column} = ${i}, " for i, column in enumerate(columns, start=3))
        statement = f"UPDATE accounts SET {sets}updated_at = $2 WHERE key_id = $1"
        values = (key_id, time.time(), *(changes[column] for column in columns))

        async def update(conn: Any) -> str:
            if name is None:
                return str(await conn.execute(statement, *values))
            # The rename and the policy together: a failure leaves neither written.
            async with conn.transaction():
                await conn.execute("UPDATE api_keys SET name = $1 WHERE id = $2", name, key_id)
                return str(await conn.execute(statement, *values))

        with unavailable_errors():
            status = await answered_within(REQUEST_READ_TIMEOUT_S, self._pool, update)
        return status.endswith(" 1")

    async def ledger_rows(self, key_id: str, limit: int, after: str | None = None) -> list[LedgerRow]:
        async def page(conn: Any) -> list[Any]:
            before = None
            if after is not None:
                before = await conn.fetchval(
                    "SELECT id FROM ledger WHERE key_id = $1 AND entry_id = $2", key_id, after
                )
                if before is None:
                    raise UnknownLedgerEntry(after)
            return list(
                await conn.fetch(
                    f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE key_id = $1"
                    " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    key_id,
                    before,
                    limit,
                )
            )

        with unavailable_errors():
            rows = await answered_within(REQUEST_READ_TIMEOUT_S, self._pool, page)
        return [_ledger_row(r) for r in rows]

    async def audit_rows(self) -> list[AuditRow]:
        rows = await self._pool.fetch(
            "SELECT a.key_id, a.balance_nano, COALESCE(l.total, 0) AS total,"
            " COALESCE(l.entries, 0) AS entries FROM accounts a LEFT JOIN"
            " (SELECT key_id, SUM(amount_nano) AS total, COUNT(*) AS entries FROM ledger GROUP BY key_id) l"
            " ON l.key_id = a.key_id ORDER BY a.key_id"
        )
        return [
            AuditRow(r["key_id"], int(r["balance_nano"]), int(r["total"]), int(r["entries"])) for r in rows
        ]

    async def ledger_keys_without_account(self) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT key_id FROM ledger l"
            " WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.key_id = l.key_id)"
        )
        return [str(r["key_id"]) for r in rows]

    async def balances(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT key_id, balance_nano FROM accounts")
        return {r["key_id"]: int(r["balance_nano"]) for r in rows}

    async def open_holds_count(self) -> int:
        return int(await self._pool.fetchval("SELECT COUNT(*) FROM open_holds"))

    async def apply_ledger(self, rows: Sequence[LedgerRow]) -> int:
        """Write shipped ledger rows (idempotent by entry id); returns how many were new."""
        if not rows:
            return 0
        keys = sorted({r.key_id for r in rows})
        for attempt in range(_RETRIES):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    # Accounts are locked in key order, so two shippers never wait on each other in a cycle.
                    await conn.execute(
                        "SELECT 1 FROM accounts WHERE key_id = ANY($1::text[]) ORDER BY key_id FOR UPDATE",
                        keys,
                    )
                    return int(await conn.fetchval(_APPLY, *_columns(rows)))
            except (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError):
                if attempt + 1 == _RETRIES:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def load_account(self, key_id: str, epoch: str, since_hour: int) -> LoadedAccount | None:
        """The account as Redis should start it in data set `epoch`. Reservations still open from
        an earlier data set (its Redis was flushed or lost) can never be settled there: they are
        released first, in the same transaction, so the money they held comes back exactly once.

        A request waits for it (an account's first use): it gives up after REQUEST_READ_TIMEOUT_S,
        as the request's other reads do. Redis loads nothing from a transaction given up; it is
        cancelled, its connection closed, and rolled back (or, given up as it committed, its releases
        are stored and the next load reads them): either way the held money comes back once."""
        with unavailable_errors():
            return await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: self._load_account(conn, key_id, epoch, since_hour),
            )

    async def _load_account(
        self, conn: Any, key_id: str, epoch: str, since_hour: int
    ) -> LoadedAccount | None:
        async with conn.transaction():
            found = await conn.fetchrow(
                "SELECT a.balance_nano, k.revoked_at FROM accounts a JOIN api_keys k ON k.id = a.key_id"
                " WHERE a.key_id = $1 FOR UPDATE OF a",
                key_id,
            )
            if found is None:
                return None
            orphans = await conn.fetch(
                "SELECT hold_id, amount_nano, hour, request_id FROM open_holds"
                " WHERE key_id = $1 AND epoch IS DISTINCT FROM $2",
                key_id,
                epoch,
            )
            released = 0
            if orphans:
                now = time.time()
                rows = [
                    LedgerRow(
                        hold_entry(o["hold_id"], "close"),
                        key_id,
                        "release",
                        int(o["amount_nano"]),
                        now,
                        hold_id=o["hold_id"],
                        request_id=o["request_id"],
                        hour=None if o["hour"] is None else int(o["hour"]),
                        note="released: the Redis data set holding it was lost",
                        epoch=epoch,
                    )
                    for o in orphans
                ]
                released = int(await conn.fetchval(_APPLY, *_columns(rows)))
                # Rows whose close was already stored (shipped out of order) are just forgotten.
                await conn.execute(
                    "DELETE FROM open_holds WHERE hold_id = ANY($1::text[])", [o["hold_id"] for o in orphans]
                )
            balance = int(await conn.fetchval("SELECT balance_nano FROM accounts WHERE key_id = $1", key_id))
            spend = await conn.fetch(
                "SELECT hour, -SUM(amount_nano) AS spent FROM ledger WHERE key_id = $1 AND hour >= $2"
                " AND kind IN ('reservation', 'settlement', 'release') GROUP BY hour",
                key_id,
                since_hour,
            )
        return LoadedAccount(
            balance,
            found["revoked_at"] is not None,
            [(int(r["hour"]), int(r["spent"])) for r in spend if int(r["spent"]) != 0],
            released,
        )
