"""The shared store: PostgreSQL (asyncpg) for keys, accounts, the ledger and request records.

Every gateway instance opens a small connection pool to the same database; nothing about
a key or its money lives only in one process. The schema is migrated at start
(store.postgres.migrations) under an advisory lock, so instances may start together.
Reservations and rate limits are not here but in Redis (store.redis.ledger): this store
receives their ledger rows in batches (store.redis.shipper), off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from faregate.errors import ConfigError
from faregate.store.postgres.accounts import KEY_COLUMNS, PostgresAccountTable, key_row
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.migrations import PG_MIGRATIONS
from faregate.store.postgres.pool import (
    CONNECT_TIMEOUT_S,
    REQUEST_READ_TIMEOUT_S,
    answered_within,
    cannot_connect,
    create_pool,
    pooled_options,
)
from faregate.store.protocols import DuplicateError, KeyRow, PolicyValues, StoreUnavailable
from faregate.store.rows import INSERT_COLUMNS, RECORD_COLUMNS, record_to_row, row_to_record
from faregate.store.schema import Migration
from faregate.types import RequestRecord

log = logging.getLogger("faregate.store.postgres")
T = TypeVar("T")

# The longest a statement of the pool may run (asyncpg's command_timeout): a server that hangs
# without failing is an outage after this, not a request held forever.
COMMAND_TIMEOUT_S = 60.0
# How long a batch of request records may take to insert (PostgreSQL takes milliseconds) before
# the writer gives it up, closes its connection and tries again on a new one, after a pause (it
# skips the ids stored). Under the statement timeout, a connection gone silent for good (a
# partition, a failover that left it open) held the records for two minutes: asyncpg waits as
# long again for PostgreSQL to take the cancel.
RECORD_WRITE_TIMEOUT_S = 10.0
# At start, each step of the schema check before the migrations themselves (begin, ask for the
# migration lock, list the applied versions) may take this long: a server that answered the
# connection and then stops answering fails the start with a message, where it held it forever
# (the migration connection has no statement timeout, for the migrations' sake).
SCHEMA_STEP_TIMEOUT_S = 10.0
# The migration lock, held by another instance migrating, is asked for again this often; the wait
# is said in the log this often too (it lasts as long as that migration does).
MIGRATION_LOCK_POLL_S = 0.5
MIGRATION_WAIT_LOG_S = 10.0
_MIGRATION_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('faregate-schema-migrations'))"

_RECORD_COLUMN_LIST = ", ".join(RECORD_COLUMNS)
# PostgreSQL types of INSERT_COLUMNS, in order, for the one-statement batch insert via unnest.
_RECORD_TYPES = (
    "text float8 text text text text int4 int4 int8 int8 text int8 "
    "int4 float8 float8 int4 text text text text int8 text text int4 int4 int4"
).split()
_INSERT_RECORDS = (
    f"INSERT INTO request_records ({', '.join(INSERT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_RECORD_TYPES, 1))
    + ") ON CONFLICT (request_id) DO NOTHING RETURNING 1"
)

# What PostgreSQL admits: its max_connections, those it keeps for superusers (and, from 16, for
# pg_use_reserved_connections) when this role is not one, and the client connections of others.
_CONNECTION_ROOM = """
SELECT current_setting('max_connections')::int AS max_connections,
       CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN 0
            ELSE current_setting('superuser_reserved_connections')::int
                 + COALESCE(current_setting('reserved_connections', true), '0')::int END AS reserved,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int AS others
"""


@dataclass(slots=True, frozen=True)
class ConnectionRoom:
    """How many more client connections PostgreSQL would take, as it said when asked."""

    max_connections: int
    reserved: int  # not for this role
    others: int  # open by anyone else when asked

    @property
    def free(self) -> int:
        return max(0, self.max_connections - self.reserved - self.others)


class PostgresStore:
    """Implements faregate.store.protocols.Store over a connection pool; its AccountTable is
    `accounts`, on the same pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.accounts = PostgresAccountTable(pool)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        migrations: Sequence[Migration] = PG_MIGRATIONS,
        transaction_pooling: bool = False,
    ) -> PostgresStore:
        """`transaction_pooling`: `url` is a pooler in transaction mode (pool.pooled_options)."""
        try:
            pool = await create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                command_timeout=COMMAND_TIMEOUT_S,
                transaction_pooling=transaction_pooling,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(cannot_connect(exc)) from exc
        store = cls(pool)
        try:
            await store._migrate(url, migrations, transaction_pooling)
        except BaseException:
            pool.terminate()  # not close(): it waits for a goodbye a silent server never gives
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def connection_room(self) -> ConnectionRoom:
        """What PostgreSQL says it has room for, beside the one connection this asks on. Asked at
        start, before the workers fork: given up as a request's reads are, not after the pool's
        statement timeout twice over."""
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S, self._pool, lambda conn: conn.fetchrow(_CONNECTION_ROOM)
            )
        return ConnectionRoom(int(row["max_connections"]), int(row["reserved"]), int(row["others"]))

    async def _migrate(self, url: str, migrations: Sequence[Migration], transaction_pooling: bool) -> None:
        known = max((m.version for m in migrations), default=0)
        # A connection of its own, without the pool's COMMAND_TIMEOUT_S: a migration that rewrites
        # a large table, or an instance waiting for another's to finish, takes what it takes (cut
        # short, it was rolled back and failed every start).
        try:
            # One transaction from BEGIN to COMMIT: a pooler in transaction mode keeps it on one
            # server connection.
            options = pooled_options(transaction_pooling, {"timeout": CONNECT_TIMEOUT_S})
            conn = await asyncpg.connect(url, **options)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(cannot_connect(exc)) from exc
        try:
            await self._apply(conn, known, migrations)
            await conn.close(timeout=SCHEMA_STEP_TIMEOUT_S)
        except BaseException:
            # PostgreSQL rolls back what a closed connection left open; nothing is waited for.
            conn.terminate()
            raise

    async def _apply(self, conn: Any, known: int, migrations: Sequence[Migration]) -> None:
        await _answered(conn.execute("BEGIN"))
        await self._take_migration_lock(conn)
        await _answered(
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
        )
        versions = await _answered(conn.fetch("SELECT version FROM schema_migrations"))
        applied = {int(r["version"]) for r in versions}
        newest = max(applied, default=0)
        if newest > known:
            raise ConfigError(
                f"the PostgreSQL database has schema version {newest}, newer than this faregate knows "
                f"({known}); upgrade faregate"
            )
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                time.time(),
            )
        await conn.execute("COMMIT")

    async def _take_migration_lock(self, conn: Any) -> None:
        """One migrator at a time across every instance; the lock ends with the transaction. Asked
        for again while another instance holds it (each ask bounded: the server answers it at
        once), and the wait said in the log: it lasts as long as that instance's migration."""
        started = time.monotonic()
        said = 0
        while not await _answered(conn.fetchval(_MIGRATION_LOCK)):
            waited = time.monotonic() - started
            if waited >= (said + 1) * MIGRATION_WAIT_LOG_S:
                said = int(waited // MIGRATION_WAIT_LOG_S)
                log.info("waiting %.0f s for another instance to migrate the PostgreSQL schema", waited)
            await asyncio.sleep(MIGRATION_LOCK_POLL_S)

    async def schema_versions(self) -> list[int]:
        rows = await self._pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [int(r["version"]) for r in rows]

    # --- keys -------------------------------------------------------------------------------

    async def insert_key(
        self, row: KeyRow, credits_nano: int = 0, policy: PolicyValues | None = None
    ) -> None:
        async def insert(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    row.id,
                    row.name,
                    row.prefix,
                    row.key_hash,
                    row.premium,
                    row.created_at,
                    row.revoked_at,
                )
                await self.accounts.open_account(conn, row, credits_nano, policy)

        # An admin waits for it: given up (a 503) as a request's reads are, rolled back unless it
        # committed as it was given up (the key is then listed).
        try:
            with unavailable_errors():
                await answered_within(REQUEST_READ_TIMEOUT_S, self._pool, insert)
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateError(str(exc)) from exc

    async def find_key(self, key_hash: str) -> KeyRow | None:
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetchrow(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
                ),
            )
        return None if row is None else key_row(row)

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRow]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with unavailable_errors():
            rows = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id"),
            )
        return [key_row(r) for r in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        with unavailable_errors():
            status = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.execute(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", at, key_id
                ),
            )
        return str(status).endswith(" 1")

    # --- request records --------------------------------------------------------------------

    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        if not records:
            return 0
        columns = list(zip(*(record_to_row(r) for r in records), strict=True))
        with unavailable_errors():
            inserted = await answered_within(
                RECORD_WRITE_TIMEOUT_S, self._pool, lambda conn: conn.fetch(_INSERT_RECORDS, *columns)
            )
        return len(inserted)

    async def get_record(self, request_id: str) -> RequestRecord | None:
        # A client's POST /v1/feedback waits for it, as a request waits for its key.
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetchrow(
                    f"SELECT {_RECORD_COLUMN_LIST} FROM request_records WHERE request_id = $1", request_id
                ),
            )
        return None if row is None else row_to_record(tuple(row))

    async def count_records(self) -> int:
        with unavailable_errors():
            return int(await self._pool.fetchval("SELECT COUNT(*) FROM request_records"))


async def _answered(step: Awaitable[T]) -> T:
    """A step of the start's schema check, or StoreUnavailable after SCHEMA_STEP_TIMEOUT_S."""
    try:
        async with asyncio.timeout(SCHEMA_STEP_TIMEOUT_S):
            return await step
    except TimeoutError as exc:
        raise StoreUnavailable(
            f"PostgreSQL stopped answering while the schema was checked at start "
            f"(no answer within {SCHEMA_STEP_TIMEOUT_S:g} s)"
        ) from exc
