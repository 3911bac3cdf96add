"""A settlement the accounts store cannot take when its request ends is kept and retried: a store
blip loses no money (accounts/settle_retry.py). On the real SQLite store, blocked by another
connection's exclusive transaction (its writes then fail with "database is locked", as on a
disk that stalls); the Redis side is in test_store_outages_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from faregate.accounts.admission import Hold
from faregate.accounts.backend import Admitted, HoldRef, ReserveAsk
from faregate.accounts.embedded import EmbeddedAccounts
from faregate.accounts.keys import KeyStore
from faregate.accounts.metered import MeteredAdmission, PolicyCache
from faregate.accounts.policy import Limits, hour_of
from faregate.accounts.settle_retry import SettlementRetry
from faregate.config import AccountsSettings
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore

UNLIMITED = Limits(None, None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(tmp_path)
    yield store
    await store.close()


@contextmanager
def blocked(path: Path) -> Iterator[None]:
    """Another connection holds the write lock: the store's writes fail (after its busy timeout)."""
    blocker = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def reserved(store: SQLiteStore, accounts: EmbeddedAccounts, amount: int) -> Hold:
    key, _ = await KeyStore(store).create("t", credits_nano=1_000_000)
    hour = hour_of(time.time())
    ask = ReserveAsk(key.id, "hold_1", "req_1", amount, 100, hour, (), UNLIMITED, 600.0)
    assert isinstance(await accounts.reserve(ask), Admitted)
    return Hold(key.id, Decimal(amount) / 10**9, 100, handle=HoldRef("hold_1", "req_1", hour, 100, UNLIMITED))


async def test_a_settlement_during_an_outage_is_kept_and_lands_when_the_store_is_back(
    store: SQLiteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    accounts = EmbeddedAccounts(store)
    admission = MeteredAdmission(accounts, PolicyCache(store.accounts), AccountsSettings(), 600.0)
    hold = await reserved(store, accounts, 400_000)
    caplog.set_level(logging.WARNING, "faregate.accounts")
    with blocked(tmp_path):
        # Answered without an error (the request's record and answer are not lost over it) ...
        await admission.settle(hold, Decimal("0.000123"), 50)
        # ... and kept, not dropped.
        assert admission.settlements.pending == 1
    await asyncio.wait_for(admission.settlements.wait_empty(), 60)
    assert admission.settlements.pending == 0 and admission.settlements.landed == 1
    balance = await accounts.balance(hold.key_id)
    assert balance is not None and (balance.balance_nano, balance.held_nano) == (1_000_000 - 123_000, 0)
    assert (await accounts.audit()).clean
    # One line when the outage began, one when it ended: no traceback.
    lines = [r for r in caplog.records if r.name == "faregate.accounts"]
    assert len(lines) == 2 and not any(r.exc_info for r in lines), [r.getMessage() for r in lines]
    await admission.settlements.close()


async def test_a_release_during_an_outage_is_kept_too(store: SQLiteStore, tmp_path: Path) -> None:
    accounts = EmbeddedAccounts(store)
    admission = MeteredAdmission(accounts, PolicyCache(store.accounts), AccountsSettings(), 600.0)
    hold = await reserved(store, accounts, 400_000)
    with blocked(tmp_path):
        await admission.release(hold)
        assert admission.settlements.pending == 1
    await asyncio.wait_for(admission.settlements.wait_empty(), 60)
    balance = await accounts.balance(hold.key_id)
    # Given back now, not when the hold expires (600 s).
    assert balance is not None and (balance.balance_nano, balance.held_nano) == (1_000_000, 0)
    await admission.settlements.close()


async def test_a_clean_stop_tries_the_kept_settlements_once_more(store: SQLiteStore, tmp_path: Path) -> None:
    accounts = EmbeddedAccounts(store)
    # The background retry would wait an hour: only the stop can land it.
    settlements = SettlementRetry(accounts, 600.0, first_delay_s=3600.0)
    hold = await reserved(store, accounts, 400_000)
    with blocked(tmp_path):
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
        assert settlements.pending == 1
    await settlements.close()
    assert settlements.pending == 0 and settlements.landed == 1
    balance = await accounts.balance(hold.key_id)
    assert balance is not None and balance.balance_nano == 1_000_000 - 123_000


async def test_a_settlement_kept_past_its_time_is_given_up_in_one_line(
    store: SQLiteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    accounts = EmbeddedAccounts(store)
    now = [0.0]
    settlements = SettlementRetry(accounts, 10.0, first_delay_s=3600.0, clock=lambda: now[0])
    hold = await reserved(store, accounts, 400_000)
    caplog.set_level(logging.WARNING, "faregate.accounts")
    with blocked(tmp_path):
        await settlements.settle(hold.key_id, hold.handle, 123_000, 50)
        now[0] = 11.0
        await settlements.close()
    assert settlements.pending == 0 and settlements.lost == 1 and settlements.landed == 0
    given_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert len(given_up) == 1 and hold.key_id in given_up[0] and "$0.000123" in given_up[0]
