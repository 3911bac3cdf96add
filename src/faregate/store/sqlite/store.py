"""The embedded store: one SQLite database (WAL) at <store.path>/faregate.db.

aiosqlite runs every statement on its own thread, so the event loop never waits on
disk. One connection serves the process: SQLite allows a single writer anyway, and one
connection means one ordered queue of statements. Because a transaction is several
queued statements, writers take an asyncio lock so that two coroutines' transactions
never interleave on the shared connection. The account writes (`run_in_transaction`) that
queue up while the thread is busy share one transaction and one commit (group commit), each
in a savepoint of its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from faregate.errors import ConfigError
from faregate.store.protocols import DuplicateError, KeyRow, PolicyValues, StoreUnavailable
from faregate.store.rows import INSERT_COLUMNS, RECORD_COLUMNS, record_to_row, row_to_record
from faregate.store.schema import Migration
from faregate.store.sqlite.accounts import SQLiteAccountTable
from faregate.store.sqlite.migrations import MIGRATIONS
from faregate.store.sqlite.writers_lock import WritersLock
from faregate.types import RequestRecord

T = TypeVar("T")
# A work queued for the next group commit, and the future its caller awaits.
_Queued = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]

DB_FILENAME = "faregate.db"
# How long a writer waits for another process (e.g. the CLI) to release the write lock.
BUSY_TIMEOUT_MS = 5000
# And for the other serving processes' lock file (`serve --workers N`), before "database is locked".
WRITERS_LOCK_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000

_KEY_COLUMNS = "id, name, prefix, key_hash, premium, created_at, revoked_at"
_RECORD_COLUMN_LIST = ", ".join(RECORD_COLUMNS)
# ON CONFLICT DO NOTHING: a request_id already stored (a retried flush whose commit did land) is
# skipped, so a record is never stored twice; the caller learns how many rows were new.
_INSERT_RECORD = (
    f"INSERT INTO request_records ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in INSERT_COLUMNS)}) ON CONFLICT (request_id) DO NOTHING"
)


@contextmanager
def _operational_errors_as_unavailable(where: Path | None = None) -> Iterator[None]:
    # OperationalError is SQLite's "not now" (locked, disk full, I/O): worth retrying later,
    # unlike IntegrityError or a bad value, which would fail the same way again. `where`: the
    # file, said when opening it (a command's one line: "PATH: database is locked").
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"{where}: {exc}" if where is not None else str(exc)) from exc


@contextmanager
def unreadable_file_as_unavailable(path: Path | str) -> Iterator[None]:
    """Opening the file and its first reads: any SQLite error there (not a database, a directory,
    permission denied) is the environment, not a bug; said with the path, in one line by the CLI."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"{path}: {exc}") from exc


def _key_row(row: Sequence[Any]) -> KeyRow:
    return KeyRow(
        id=row[0],
        name=row[1],
        prefix=row[2],
        key_hash=row[3],
        premium=bool(row[4]),
        created_at=float(row[5]),
        revoked_at=None if row[6] is None else float(row[6]),
    )


def _mark_retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


def _settle(batch: list[_Queued], outcomes: list[Any]) -> None:
    for (_, done), outcome in zip(batch, outcomes, strict=True):
        if done.done():
            continue
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome.value)


class _Done:
    """A work's return value (which may itself be an exception object, or None)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class SQLiteStore:
    """Implements faregate.store.protocols.Store; its AccountTable is `accounts`, on the same
    connection and write lock."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, processes_lock: bool = False) -> None:
        self._conn = conn
        self.path = path
        self._write_lock = asyncio.Lock()
        # Several serving processes (`serve --workers N`): a writer waits for the others on a
        # lock file, woken the moment it is free, instead of in SQLite's busy handler, which
        # sleeps 1, 2, 5, 10... ms between tries (measured: two metered workers served fewer
        # requests than one); for at most WRITERS_LOCK_TIMEOUT_S, as in that handler.
        self._writers = (
            WritersLock(path.with_name(path.name + ".writers"), WRITERS_LOCK_TIMEOUT_S)
            if processes_lock
            else None
        )
        self.accounts = SQLiteAccountTable(conn, self._transaction)
        # run_in_transaction's queue: works waiting for the next batch, and the task running them.
        self._queued: list[_Queued] = []
        self._drainer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        directory: str | Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        processes_lock: bool = False,
    ) -> SQLiteStore:
        """Open (creating the directory and database if missing) and apply pending migrations.
        `processes_lock`: other serving processes write to this file too (see __init__)."""
        root = Path(directory)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        path = root / DB_FILENAME
        # isolation_level=None: no implicit transactions; this module says BEGIN/COMMIT itself.
        with unreadable_file_as_unavailable(path):
            conn = await aiosqlite.connect(path, isolation_level=None)
        store = cls(conn, path, processes_lock=processes_lock)
        try:
            with unreadable_file_as_unavailable(path):
                await store._configure()
            with _operational_errors_as_unavailable(path):
                await store._migrate(migrations)
        except BaseException:
            await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self._conn.close()
        if self._writers is not None:
            self._writers.close()
            self._writers = None

    def _lock(self) -> None:
        """On the connection's thread, before BEGIN IMMEDIATE: wait for the other processes
        (sqlite3.OperationalError, "database is locked", past WRITERS_LOCK_TIMEOUT_S)."""
        if self._writers is not None:
            self._writers.acquire()

    def _unlock(self) -> None:
        if self._writers is not None:
            self._writers.release()

    async def _configure(self) -> None:
        await self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = await self._switch_to_wal()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreUnavailable(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
        # In WAL mode NORMAL survives a process crash; only an OS crash or power loss can undo
        # the last commits, and it saves an fsync per transaction.
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.execute("PRAGMA foreign_keys=ON")

    async def _switch_to_wal(self) -> Any:
        """PRAGMA journal_mode=WAL, tried again while another process holds the file: processes
        opening a new file together (the workers of `serve --workers N`) race to switch it, and
        SQLite answers the loser "database is locked" at once, without its busy handler
        (measured: 2 starts in 200 failed so)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                cursor = await self._conn.execute("PRAGMA journal_mode=WAL")
                return await cursor.fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        await self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        known = max((m.version for m in migrations), default=0)
        # BEGIN IMMEDIATE takes the write lock before reading the applied versions, so two
        # processes starting together cannot both apply the same migration.
        async with self._transaction():
            rows = await self._conn.execute_fetchall("SELECT version FROM schema_migrations")
            applied = {int(row[0]) for row in rows}
            newest = max(applied, default=0)
            if newest > known:
                raise ConfigError(
                    f"{self.path} has schema version {newest}, newer than this faregate knows ({known}); "
                    "upgrade faregate or point store.path elsewhere"
                )
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    await self._conn.execute(statement)
                await self._conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )

    async def schema_versions(self) -> list[int]:
        rows = await self._conn.execute_fetchall("SELECT version FROM schema_migrations ORDER BY version")
        return [int(row[0]) for row in rows]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._write_lock:
            if self._writers is not None:
                await self._on_thread(self._lock)
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    await self._conn.execute("COMMIT")
                except BaseException:
                    # A no-op if COMMIT already ended the transaction.
                    await self._conn.rollback()
                    raise
            finally:
                if self._writers is not None:
                    await self._on_thread(self._unlock)

    async def run_in_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` inside a write transaction, whole, on the connection's own thread.

        One hop to the thread instead of one per statement: a reservation (several statements)
        costs a single round trip. Works queued while the thread is busy are run together, in one
        transaction, each in a savepoint of its own (group commit): a work that raises is rolled
        back alone, and one commit serves them all (with metering on, two per request). Each
        runs as if alone: in turn, seeing what the ones before it wrote. The write lock keeps a
        batch from landing inside another coroutine's multi-statement transaction; once queued,
        a work runs to its end even if its caller is cancelled, so it is never left half done.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        # A caller cancelled while its work ran never reads the outcome: no "never retrieved" log.
        done.add_done_callback(_mark_retrieved)
        self._queued.append((work, done))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        with _operational_errors_as_unavailable():
            result: T = await asyncio.shield(done)
        return result

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                await self._run_queued(batch)
        finally:
            self._drainer = None

    async def _run_queued(self, batch: list[_Queued]) -> None:
        try:
            async with self._write_lock:
                outcomes = await self._on_thread(partial(self._run_batch, batch))
        except BaseException as exc:  # BEGIN or COMMIT failed: none of them happened
            outcomes = [exc] * len(batch)
            if not isinstance(exc, Exception):
                _settle(batch, outcomes)
                raise
        _settle(batch, outcomes)

    def _run_batch(self, batch: list[_Queued]) -> list[Any]:
        conn = self._conn._conn
        outcomes: list[Any] = []
        self._lock()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for work, _ in batch:
                    conn.execute("SAVEPOINT work")
                    try:
                        value = work(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO work")
                        conn.execute("RELEASE work")
                        outcomes.append(exc)
                        continue
                    conn.execute("RELEASE work")
                    outcomes.append(_Done(value))
                # Inside the try: a COMMIT that fails (disk full, I/O error) may leave the
                # transaction open, holding the write lock, and every later BEGIN would fail.
                conn.execute("COMMIT")
            except BaseException:
                conn.rollback()
                raise
        finally:
            self._unlock()
        return outcomes

    async def run_read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run read-only `work` on the connection's thread in one hop (no transaction, no lock)."""
        with _operational_errors_as_unavailable():
            result: T = await self._on_thread(lambda: work(self._conn._conn))
        return result

    def _on_thread(self, work: Callable[[], T]) -> Awaitable[T]:
        # aiosqlite's own queue onto its thread (its public methods use it the same way).
        run: Callable[[Callable[[], T]], Awaitable[T]] = self._conn._execute
        return run(work)

    # --- keys -------------------------------------------------------------------------------

    async def insert_key(
        self, row: KeyRow, credits_nano: int = 0, policy: PolicyValues | None = None
    ) -> None:
        try:
            with _operational_errors_as_unavailable():
                async with self._transaction():
                    await self._conn.execute(
                        f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            row.id,
                            row.name,
                            row.prefix,
                            row.key_hash,
                            int(row.premium),
                            row.created_at,
                            row.revoked_at,
                        ),
                    )
                    # The account (its policy, its grant) exists from the key's first moment.
                    await self.accounts.open_account(row, credits_nano, policy)
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(str(exc)) from exc

    async def find_key(self, key_hash: str) -> KeyRow | None:
        with _operational_errors_as_unavailable():
            rows = await self._conn.execute_fetchall(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            )
        for row in rows:
            return _key_row(row)
        return None

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRow]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with _operational_errors_as_unavailable():
            rows = await self._conn.execute_fetchall(
                f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id"
            )
        return [_key_row(row) for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        with _operational_errors_as_unavailable():
            async with self._transaction():
                cursor = await self._conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id)
                )
                revoked = int(cursor.rowcount) > 0
        return revoked

    # --- request records --------------------------------------------------------------------

    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        if not records:
            return 0
        # A generator: sqlite3 draws the rows on the connection's thread, so building them (money
        # text, the attempts JSON) is not event-loop time (CPU all the same, under the GIL).
        rows = (record_to_row(r) for r in records)
        with _operational_errors_as_unavailable():
            async with self._transaction():
                cursor = await self._conn.executemany(_INSERT_RECORD, rows)
                inserted = int(cursor.rowcount)
        return inserted

    async def get_record(self, request_id: str) -> RequestRecord | None:
        with _operational_errors_as_unavailable():
            rows = await self._conn.execute_fetchall(
                f"SELECT {_RECORD_COLUMN_LIST} FROM request_records WHERE request_id = ?", (request_id,)
            )
        for row in rows:
            return row_to_record(row)
        return None

    async def count_records(self) -> int:
        with _operational_errors_as_unavailable():
            rows = await self._conn.execute_fetchall("SELECT COUNT(*) FROM request_records")
        return int(next(iter(rows))[0])
