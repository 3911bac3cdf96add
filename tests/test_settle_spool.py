"""Kept settlements survive a killed process (accounts/settle_spool.py): each is written to a
spool file while it waits, and the next process to start retries what a dead one left. On the real
SQLite store; its outage is said at the seam (StoreUnavailable, as the store raises it when blocked:
test_settle_retry.py blocks it for real, at 5 s a settlement). The gateway killed with SIGKILL
during a Redis outage is in test_store_outages_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from faregate.accounts.admission import Hold
from faregate.accounts.backend import HoldRef
from faregate.accounts.embedded import EmbeddedAccounts
from faregate.accounts.policy import Limits
from faregate.accounts.settle_retry import SettlementRetry
from faregate.accounts.settle_spool import SettlementSpool, SpooledClose, entry_line, read_open_entries
from faregate.store.protocols import StoreUnavailable
from faregate.store.sqlite.store import SQLiteStore
from test_settle_retry import reserved, store  # noqa: F401

SETTLED = 1_000_000 - 123_000


class Reachable(EmbeddedAccounts):
    """The SQLite accounts, whose settlements fail as in an outage while `down`."""

    down = False

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None:
        if self.down:
            raise StoreUnavailable("database is locked")
        await super().settle(key_id, ref, cost_nano, tokens)


@contextmanager
def blocked(accounts: Reachable) -> Iterator[None]:
    accounts.down = True
    try:
        yield
    finally:
        accounts.down = False


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def kill(settlements: SettlementRetry) -> None:
    """What SIGKILL does to the spool: its file stays as it is and its lock is dropped."""
    assert settlements.spool is not None
    os.close(settlements.spool._fd)


def orphan(directory: Path, *items: SpooledClose, name: str = "settlements-1-dead.jsonl") -> Path:
    """A spool file as a killed process leaves it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"".join(entry_line(item) for item in items))
    return path


def entry(key_id: str, ref: HoldRef, kept_unix: float) -> SpooledClose:
    return SpooledClose(key_id, ref, 123_000, 50, kept_unix)


async def started(
    accounts: Reachable, spool: Path, first_delay_s: float, **options: float
) -> SettlementRetry:
    """A process's kept settlements, spooled in `spool` (where it takes over what dead ones left)."""
    settlements = SettlementRetry(accounts, 600.0, first_delay_s=first_delay_s, **options)
    await settlements.open_spool(spool)
    return settlements


async def kept_in_an_outage(db: SQLiteStore, accounts: Reachable, settlements: SettlementRetry) -> Hold:
    """A request's settlement made while the store is down: `settlements` keeps it, on disk."""
    hold = await reserved(db, accounts, 400_000)
    with blocked(accounts):
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
    return hold


async def assert_charged_once(accounts: Reachable, hold: Hold) -> None:
    balance = await accounts.balance(hold.key_id)
    assert balance is not None and (balance.balance_nano, balance.held_nano) == (SETTLED, 0)


async def test_a_kept_settlement_is_on_disk_until_it_lands(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    accounts = Reachable(store)
    spool = tmp_path / "spool"
    settlements = await started(accounts, spool, first_delay_s=0.01)
    hold = await reserved(store, accounts, 400_000)
    with blocked(accounts):
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
        (path,) = spool_files(spool)
        # On disk when settle returns; the money as decimal text.
        line = orjson.loads(path.read_bytes().splitlines()[0])
        assert line["cost_usd"] == "0.000123" and line["hold"] == "hold_1" and line["key"] == hold.key_id
        assert read_open_entries(path.read_bytes(), path)[0].ref == hold.handle
        assert settlements.spooled == 1
    await asyncio.wait_for(settlements.wait_empty(), 60)
    # Landed: nothing left to replay.
    assert settlements.spooled == 0 and path.stat().st_size == 0
    await settlements.close()
    assert spool_files(spool) == []


async def test_a_killed_process_s_settlement_is_charged_once_by_the_next(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    accounts = Reachable(store)
    spool = tmp_path / "spool"
    first = await started(accounts, spool, first_delay_s=3600.0)
    hold = await kept_in_an_outage(store, accounts, first)
    kill(first)
    (left,) = spool_files(spool)
    saved = left.read_bytes()

    second = await started(accounts, spool, first_delay_s=0.01)
    assert second.replayed == 1 and second.pending == 1 and not left.exists()
    await asyncio.wait_for(second.wait_empty(), 60)
    assert second.landed == 1 and second.lost == 0
    await assert_charged_once(accounts, hold)

    # The same entry replayed again (a kill in the middle of a takeover leaves it in two files):
    # the store's settle is idempotent per hold, nothing more is charged.
    left.write_bytes(saved)
    third = await started(accounts, spool, first_delay_s=0.01)
    assert third.replayed == 1
    await asyncio.wait_for(third.wait_empty(), 60)
    balance = await accounts.balance(hold.key_id)
    assert balance is not None and balance.balance_nano == SETTLED
    assert (await accounts.audit()).clean
    for settlements in (second, third):
        await settlements.close()


async def test_a_clean_stop_with_the_store_down_leaves_the_settlement_in_the_spool(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    accounts = Reachable(store)
    spool = tmp_path / "spool"
    first = await started(accounts, spool, first_delay_s=3600.0)
    hold = await kept_in_an_outage(store, accounts, first)
    with blocked(accounts):
        await first.close()
    # Not given up: the next start takes it over.
    assert first.lost == 0 and len(spool_files(spool)) == 1
    second = await started(accounts, spool, first_delay_s=0.01)
    await asyncio.wait_for(second.wait_empty(), 60)
    balance = await accounts.balance(hold.key_id)
    assert second.landed == 1 and balance is not None and balance.balance_nano == SETTLED
    await second.close()
    assert spool_files(spool) == []


async def test_a_live_process_s_spool_is_left_alone(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    """serve --workers N: a worker starting beside others takes over none of their settlements."""
    accounts = Reachable(store)
    spool = tmp_path / "spool"
    live = await started(accounts, spool, first_delay_s=3600.0)
    await kept_in_an_outage(store, accounts, live)
    starting = await started(accounts, spool, first_delay_s=3600.0)
    assert starting.replayed == 0 and starting.pending == 0 and live.spooled == 1
    assert live.spool is not None and live.spool.path.stat().st_size > 0
    await starting.close()
    await live.close()  # lands it
    assert live.landed == 1


async def test_processes_starting_together_take_a_dead_one_s_spool_over_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    limits = Limits(None, None)
    items = [entry("key_a", HoldRef(f"hold_{i}", None, 1, 100, limits), time.time()) for i in range(20)]
    orphan(spool, *items)

    async def start() -> list[SpooledClose]:
        opened = await SettlementSpool.open(spool)
        return await opened.claim_orphans()

    claims = await asyncio.gather(*(start() for _ in range(6)))
    assert sorted(len(c) for c in claims) == [0, 0, 0, 0, 0, 20]
    assert not (spool / "settlements-1-dead.jsonl").exists()


async def test_an_entry_kept_longer_than_settle_retry_s_ago_is_given_up_not_charged(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis remembers a settled hold for settle_retry_s plus a minute: replayed later, one that in
    fact landed before the kill would be charged twice. So it is given up and said, like one kept
    in memory that long."""
    accounts = Reachable(store)
    hold = await reserved(store, accounts, 400_000)
    spool = tmp_path / "spool"
    orphan(spool, entry(hold.key_id, hold.handle, time.time() - 700))
    caplog.set_level(logging.WARNING, "faregate.accounts")
    settlements = await started(accounts, spool, first_delay_s=0.01)
    await asyncio.wait_for(settlements.wait_empty(), 60)
    assert settlements.lost == 1 and settlements.landed == 0 and settlements.spooled == 0
    balance = await accounts.balance(hold.key_id)
    # Still held, not charged: the hold's expiry releases it.
    assert balance is not None and (balance.balance_nano, balance.held_nano) == (600_000, 400_000)
    given_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert len(given_up) == 1 and "hold_1" in given_up[0] and "$0.000123" in given_up[0]
    await settlements.close()
    assert spool_files(spool) == []


def test_a_torn_last_line_and_landed_entries_are_not_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(60, 1000)
    first = entry("key_a", HoldRef("hold_a", "req_a", 7, 100, limits), 1.5)
    landed = entry("key_a", HoldRef("hold_b", None, 7, 100, limits), 1.5)
    release = SpooledClose("key_b", HoldRef("hold_c", None, 7, 10, limits), None, 0, 2.0)
    data = entry_line(first) + entry_line(landed) + entry_line(release) + b'{"landed": "hold_b"}\n'
    torn = entry_line(first)[:30]
    caplog.set_level(logging.WARNING, "faregate.accounts")
    assert read_open_entries(data + torn, tmp_path / "x.jsonl") == [first, release]
    assert any("line 5 skipped" in r.getMessage() for r in caplog.records)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (a full disk as a write sees it), after a short
    write of what fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_a_failed_spool_write_keeps_the_settlement_in_memory_and_spoils_no_entry(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = Reachable(store)
    settlements = SettlementRetry(accounts, 600.0, first_delay_s=3600.0)
    await settlements.open_spool(tmp_path / "spool")
    assert settlements.spool is not None
    path = settlements.spool.path
    limits = Limits(None, None)
    caplog.set_level(logging.WARNING, "faregate.accounts")
    with blocked(accounts):
        await settlements.settle("key_a", HoldRef("hold_a", None, 1, 10, limits), 1_000, 5)
        size = path.stat().st_size
        with file_size_limit(size + 20):  # room for part of a line only
            await settlements.settle("key_a", HoldRef("hold_b", None, 1, 10, limits), 2_000, 5)
        # Kept all the same, in memory; said once.
        assert settlements.pending == 2 and settlements.spooled == 1
        assert any("kept in memory only" in r.getMessage() for r in caplog.records)
        # The part of a line written before the failure is gone: the next entry reads whole.
        assert path.stat().st_size == size
        await settlements.settle("key_a", HoldRef("hold_c", None, 1, 10, limits), 3_000, 5)
    assert [e.ref.hold_id for e in read_open_entries(path.read_bytes(), path)] == ["hold_a", "hold_c"]
    kill(settlements)


async def test_the_end_of_an_outage_says_which_settlements_landed_and_which_were_given_up(
    store: SQLiteStore,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = Reachable(store)
    now = [0.0]
    settlements = SettlementRetry(accounts, 10.0, first_delay_s=0.01, clock=lambda: now[0])
    hold = await reserved(store, accounts, 400_000)
    caplog.set_level(logging.WARNING, "faregate.accounts")
    with blocked(accounts):
        await settlements.settle("key_gone", HoldRef("hold_old", None, 1, 10, Limits(None, None)), 1_000, 5)
        now[0] = 5.0
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
        now[0] = 11.0  # the first is past settle_retry_s, the second is not
    await asyncio.wait_for(settlements.wait_empty(), 60)
    assert (settlements.landed, settlements.lost) == (1, 1)
    said = [r.getMessage() for r in caplog.records]
    assert not any("every kept settlement has landed" in line for line in said), said
    assert any("1 kept settlement(s) landed, 1 given up" in line for line in said), said
    await settlements.close()


async def test_an_outage_whose_settlements_were_all_given_up_does_not_end_as_landed(
    store: SQLiteStore,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = Reachable(store)
    now = [0.0]
    settlements = SettlementRetry(accounts, 10.0, first_delay_s=0.01, clock=lambda: now[0])
    hold = await reserved(store, accounts, 400_000)
    caplog.set_level(logging.WARNING, "faregate.accounts")
    with blocked(accounts):
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
        now[0] = 11.0
        await asyncio.wait_for(settlements.wait_empty(), 60)
    said = [r.getMessage() for r in caplog.records]
    assert settlements.lost == 1 and not any("reachable again" in line for line in said), said
    assert any("all 1 were given up" in line and "none has landed" in line for line in said), said
    await settlements.close()


async def test_a_live_process_takes_over_the_spool_of_one_killed_after_it_started(
    store: SQLiteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    """serve --workers N: a killed worker the supervisor cannot restart (memory, a process limit)
    leaves its spool to the workers still serving, not only to the next process that starts."""
    accounts = Reachable(store)
    spool = tmp_path / "spool"
    live = await started(accounts, spool, first_delay_s=0.01, orphan_scan_s=0.05)
    killed = await started(accounts, spool, first_delay_s=3600.0)
    hold = await kept_in_an_outage(store, accounts, killed)
    kill(killed)
    assert killed._task is not None
    killed._task.cancel()

    # Taken over by the live process's next look (no process starts here); up to 30 s allowed.
    for _ in range(3000):
        if live.replayed:
            break
        await asyncio.sleep(0.01)
    assert live.replayed == 1
    await asyncio.wait_for(live.wait_empty(), 60)
    assert live.landed == 1
    await assert_charged_once(accounts, hold)
    await live.close()
    assert spool_files(spool) == []
