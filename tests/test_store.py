from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from faregate.config import Settings, StoreSettings
from faregate.errors import ConfigError
from faregate.store.analytics_rows import Slice
from faregate.store.backends import open_backends, open_records_reader
from faregate.store.protocols import StoreUnavailable
from faregate.store.rows import from_nanousd, to_nanousd, usd_text
from faregate.store.schema import Migration
from faregate.store.sqlite.migrations import LATEST_VERSION, MIGRATIONS
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore
from faregate.types import RequestRecord


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def listed(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def applied(path: Path) -> list[tuple[int, str, float]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version"))


def open_together(root: str, rounds: int, barrier: Any, errors: Any) -> None:
    """One of several processes that open the same new store at the same moment, `rounds` times."""

    async def open_once(directory: Path) -> None:
        store = await SQLiteStore.open(directory, processes_lock=True)
        await store.close()

    for round_ in range(rounds):
        barrier.wait()
        try:
            asyncio.run(open_once(Path(root) / f"store-{round_}"))
        except Exception as exc:
            errors.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.e2e
def test_processes_opening_a_new_store_together_all_open_it(tmp_path: Path) -> None:
    # The workers of `serve --workers 2` open the store together; the one that lost the race to
    # switch a new file to WAL failed with "database is locked" and took the gateway down at
    # start (5 opens in 240 failed here before the fix).
    spawn = multiprocessing.get_context("spawn")
    processes, rounds = 6, 40
    barrier, errors = spawn.Barrier(processes), spawn.Queue()
    openers = [
        spawn.Process(target=open_together, args=(str(tmp_path), rounds, barrier, errors))
        for _ in range(processes)
    ]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(120)
    assert [opener.exitcode for opener in openers] == [0] * processes
    failed = []
    while not errors.empty():
        failed.append(errors.get())
    assert failed == []


async def test_open_creates_directory_database_in_wal_mode(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "store"
    backends = await open_backends(Settings(store=StoreSettings(path=str(directory))))
    await backends.close()
    db = directory / DB_FILENAME
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"schema_migrations", "api_keys", "request_records"} <= tables(db)


async def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    assert await store.schema_versions() == [m.version for m in MIGRATIONS]
    await store.close()
    first = applied(tmp_path / DB_FILENAME)

    for _ in range(2):
        store = await SQLiteStore.open(tmp_path)
        await store.close()
    assert applied(tmp_path / DB_FILENAME) == first  # nothing re-applied, applied_at unchanged


async def test_only_missing_versions_are_applied(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path, migrations=MIGRATIONS[:1])
    await store.close()
    assert "request_records" not in tables(tmp_path / DB_FILENAME)
    assert [v for v, _, _ in applied(tmp_path / DB_FILENAME)] == [1]

    store = await SQLiteStore.open(tmp_path)
    await store.close()
    assert "request_records" in tables(tmp_path / DB_FILENAME)
    assert [v for v, _, _ in applied(tmp_path / DB_FILENAME)] == list(range(1, LATEST_VERSION + 1))


async def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = (*MIGRATIONS, Migration(99, "broken", ("CREATE TABLE half_done (x INTEGER)", "NOT SQL")))
    with pytest.raises(Exception, match="syntax error"):
        await SQLiteStore.open(tmp_path, migrations=broken)
    db = tmp_path / DB_FILENAME
    # The pending migrations ran in one transaction: none of them is recorded or half-applied.
    assert "half_done" not in tables(db)
    assert "api_keys" not in tables(db)
    assert applied(db) == []


async def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    await store.close()
    with pytest.raises(ConfigError, match="newer than this faregate knows"):
        await SQLiteStore.open(tmp_path, migrations=MIGRATIONS[:1])


def test_migration_versions_strictly_increase_from_one() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert LATEST_VERSION == versions[-1]


@pytest.mark.parametrize(
    ("cost", "text", "nano"),
    [
        (Decimal("0.00082"), "0.00082", 820_000),
        (Decimal("0.000000075"), "0.000000075", 75),
        (Decimal("1E+2"), "100", 100_000_000_000),
        (Decimal(0), "0", 0),
        (Decimal("12.345678901"), "12.345678901", 12_345_678_901),
    ],
)
def test_money_columns_are_exact(cost: Decimal, text: str, nano: int) -> None:
    assert usd_text(cost) == text
    assert Decimal(usd_text(cost)) == cost
    assert to_nanousd(cost) == nano
    assert from_nanousd(nano) == cost


def test_sub_nano_remainder_rounds_half_even() -> None:
    assert to_nanousd(Decimal("0.0000000375")) == 38  # 37.5 -> 38
    assert to_nanousd(Decimal("0.0000000365")) == 36  # 36.5 -> 36


async def test_works_queued_together_commit_together_and_fail_alone(tmp_path: Path) -> None:
    table = Migration(99, "a test table", ("CREATE TABLE t (x INTEGER UNIQUE)",))
    store = await SQLiteStore.open(tmp_path, migrations=(*MIGRATIONS, table))
    batches: list[int] = []
    run_batch = store._run_batch

    def counted(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return run_batch(batch)

    store._run_batch = counted  # type: ignore[method-assign]

    def insert(x: int) -> Callable[[sqlite3.Connection], int]:
        return lambda conn: int(conn.execute("INSERT INTO t VALUES (?)", (x,)).rowcount)

    try:
        values = [1, 2, 2, *range(3, 50)]
        works = [store.run_in_transaction(insert(x)) for x in values]
        results = await asyncio.gather(*works, return_exceptions=True)
        assert isinstance(results[2], sqlite3.IntegrityError)  # the duplicate, rolled back alone
        assert [r for i, r in enumerate(results) if i != 2] == [1] * 49
        assert sum(batches) == 50 and len(batches) < 50  # queued works shared commits
        rows = await store.run_read(lambda conn: conn.execute("SELECT x FROM t ORDER BY x").fetchall())
        assert [r[0] for r in rows] == list(range(1, 50))
    finally:
        await store.close()


async def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A group commit whose COMMIT fails (in production: the disk full or an I/O error as the WAL
    is written) is rolled back: later writes go on, here and in other processes, instead of
    every one failing with "cannot start a transaction within a transaction" until a restart.
    A foreign key checked at COMMIT (defer_foreign_keys) makes the COMMIT fail on demand."""
    store = await SQLiteStore.open(tmp_path)

    def failing_at_commit(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("INSERT INTO accounts (key_id, balance_nano, updated_at) VALUES ('no-such-key', 0, 0)")

    def key_count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    try:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await store.run_in_transaction(failing_at_commit)
        assert await store.run_in_transaction(key_count) == 0
        # The write lock was given back too: another connection can write.
        with sqlite3.connect(store.path, timeout=0.1) as other:
            other.execute("INSERT INTO rollup_state (name, last_id) VALUES ('probe', 0)")
        accounts = await store.run_read(lambda conn: conn.execute("SELECT COUNT(*) FROM accounts").fetchone())
        assert accounts[0] == 0  # nothing of the failed batch was kept
    finally:
        await store.close()


@pytest.mark.parametrize("name", ["store #2", "store?v=1", "100%store", "store%23"])
async def test_the_read_only_reader_opens_a_store_whose_path_has_uri_characters(
    tmp_path: Path, name: str
) -> None:
    """`faregate cost --from-records` reads the store at store.path whatever its name: the path
    goes into an SQLite URI (file:...?mode=ro), where #, ? and % mean something."""
    directory = tmp_path / name
    store = await SQLiteStore.open(directory)
    record = RequestRecord(
        request_id="r1",
        created_at=1000.0,
        key_id=None,
        model_requested="m",
        model_used="m",
        provider="p",
        status=200,
        stream=False,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=Decimal("0.000123"),
    )
    await store.insert_records([record])
    await store.close()
    before = listed(tmp_path)
    reader = await open_records_reader(Settings(store=StoreSettings(path=str(directory))))
    try:
        (traffic,) = await reader.traffic(Slice(0, 2000))
    finally:
        await reader.close()
    assert (traffic.group, traffic.requests, traffic.cost) == ("m", 1, Decimal("0.000123"))
    assert listed(tmp_path) == before  # no other database made beside it


async def test_a_store_file_that_is_not_a_database_is_unavailable_not_a_bug(tmp_path: Path) -> None:
    """`faregate keys list`, `usage`, `serve`... on a store.path whose faregate.db is something else
    (a corrupt file, a file of another program, a directory): StoreUnavailable, which the CLI says in
    one line with the path, not a DatabaseError's traceback."""
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / DB_FILENAME).write_bytes(b"not a database, just text " * 10)
    (tmp_path / "dir" / DB_FILENAME).mkdir(parents=True)
    with pytest.raises(StoreUnavailable, match="file is not a database") as raised:
        await SQLiteStore.open(tmp_path / "text")
    assert str(tmp_path / "text" / DB_FILENAME) in str(raised.value)
    with pytest.raises(StoreUnavailable, match="unable to open"):
        await SQLiteStore.open(tmp_path / "dir")


def _a_record(request_id: str) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        created_at=1000.0,
        key_id=None,
        model_requested="m",
        model_used="m",
        provider="p",
        status=200,
        stream=False,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=Decimal("0.000123"),
    )


def _count_keys(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])


async def test_a_process_stuck_holding_the_writers_lock_is_an_outage_not_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers N`: another worker stuck while it holds the lock file (stopped, frozen, its
    event loop blocked) makes this one's writes StoreUnavailable (a 503, records kept for a later
    flush) after the timeout, as SQLite's own busy timeout does, instead of stalling them forever;
    once it lets go, writes go through again and this process keeps no hold on the lock."""
    monkeypatch.setattr("faregate.store.sqlite.store.WRITERS_LOCK_TIMEOUT_S", 0.2)
    store = await SQLiteStore.open(tmp_path, processes_lock=True)
    other = os.open(tmp_path / f"{DB_FILENAME}.writers", os.O_RDWR)  # the stuck worker's open file
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        # Bounded only so that a stall fails the test instead of hanging it.
        with pytest.raises(StoreUnavailable, match="database is locked"):
            await asyncio.wait_for(store.insert_records([_a_record("r1")]), 60)
        with pytest.raises(StoreUnavailable, match="database is locked"):
            await asyncio.wait_for(store.run_in_transaction(_count_keys), 60)
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(store.insert_records([_a_record("r2")]), 60) == 1
        assert await asyncio.wait_for(store.run_in_transaction(_count_keys), 60) == 0
        # This process holds nothing between writes: the other can take the lock again at once.
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await store.count_records() == 1
    finally:
        os.close(other)
        await store.close()


async def test_a_write_waiting_for_the_writers_lock_goes_on_once_it_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("faregate.store.sqlite.store.WRITERS_LOCK_TIMEOUT_S", 120.0)
    store = await SQLiteStore.open(tmp_path, processes_lock=True)
    other = os.open(tmp_path / f"{DB_FILENAME}.writers", os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        write = asyncio.create_task(store.insert_records([_a_record("r1")]))
        await asyncio.sleep(0.05)  # a chance to start waiting (whether it did or not, it goes through)
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(write, 60) == 1
    finally:
        os.close(other)
        await store.close()
