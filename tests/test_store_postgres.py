"""The PostgreSQL store and the Redis hold store, against real throwaway servers (tests/servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from faregate.accounts.backend import Admitted, HoldRef, Refused, ReserveAsk
from faregate.accounts.keys import KeyStore
from faregate.accounts.policy import Budget, Limits, hour_of, window_of
from faregate.accounts.shared import SharedAccounts
from faregate.config import RecordsSettings
from faregate.errors import ConfigError
from faregate.store.alert_memory import FiredAlert
from faregate.store.analytics_rows import Slice
from faregate.store.outage import is_outage, outage_error
from faregate.store.postgres.alert_memory import PostgresAlertMemory
from faregate.store.postgres.analytics import PostgresAnalytics
from faregate.store.postgres.migrations import PG_MIGRATIONS
from faregate.store.postgres.store import PostgresStore
from faregate.store.protocols import KeyRow, LedgerRow, StoreUnavailable, UnknownLedgerEntry
from faregate.store.redis.ledger import account_key
from faregate.store.schema import Migration
from faregate.telemetry.records import RecordWriter
from faregate.types import RequestRecord
from servers import PostgresServer, RedisServer, SharedUrls, postgres_server, redis_server, shared_urls  # noqa: F401

pytestmark = pytest.mark.e2e

UNLIMITED = Limits(None, None)


@pytest.fixture
async def pg(shared_urls: SharedUrls) -> AsyncIterator[PostgresStore]:  # noqa: F811
    store = await PostgresStore.open(shared_urls.postgres)
    yield store
    await store.close()


@pytest.fixture
async def shared(pg: PostgresStore, shared_urls: SharedUrls) -> AsyncIterator[SharedAccounts]:  # noqa: F811
    accounts = await SharedAccounts.connect(shared_urls.redis, pg, flush_interval_s=0.02, sweep_interval_s=60)
    await accounts.start()
    yield accounts
    await accounts.close()


def ask(
    key_id: str, n: int, amount: int, *, ttl: float = 60.0, windows: tuple = (), limits: Limits = UNLIMITED
) -> ReserveAsk:  # type: ignore[type-arg]
    return ReserveAsk(
        key_id, f"hold_{n}", f"req_{n}", amount, 100, hour_of(time.time()), windows, limits, ttl
    )


async def ledger_sum(pg: PostgresStore, key_id: str) -> int:
    return int(
        await pg._pool.fetchval("SELECT COALESCE(SUM(amount_nano), 0) FROM ledger WHERE key_id = $1", key_id)
    )


# -- the store -------------------------------------------------------------------------------


async def test_migrations_are_versioned_idempotent_and_refuse_a_newer_schema(shared_urls: SharedUrls) -> None:  # noqa: F811
    first = await PostgresStore.open(shared_urls.postgres)
    second = await PostgresStore.open(shared_urls.postgres)  # a second instance starting: nothing to do
    assert await first.schema_versions() == [m.version for m in PG_MIGRATIONS]
    await first.close()
    await second.close()
    with pytest.raises(ConfigError, match="newer than this faregate knows"):
        await PostgresStore.open(shared_urls.postgres, migrations=PG_MIGRATIONS[:1])


async def test_instances_starting_together_migrate_once(shared_urls: SharedUrls) -> None:  # noqa: F811
    stores = await asyncio.gather(*(PostgresStore.open(shared_urls.postgres) for _ in range(4)))
    assert await stores[0].schema_versions() == [m.version for m in PG_MIGRATIONS]
    for store in stores:
        await store.close()


async def test_a_migration_longer_than_a_command_is_allowed_still_completes(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool's per-statement timeout (60 s) is for serving; a migration that rewrites a large
    table (PostgreSQL 9 fills three columns of every record) takes what it takes, and cut short it
    failed every start. The timeout shrunk to half a second, and a migration that takes a second."""
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "COMMAND_TIMEOUT_S", 0.5)
    slow = Migration(PG_MIGRATIONS[-1].version + 1, "a long one", ("SELECT pg_sleep(1)",))
    store = await PostgresStore.open(shared_urls.postgres, migrations=(*PG_MIGRATIONS, slow))
    try:
        assert (await store.schema_versions())[-1] == slow.version
        with pytest.raises(TimeoutError):  # serving statements keep their timeout
            await store._pool.execute("SELECT pg_sleep(1)")
    finally:
        await store.close()


async def test_a_read_only_server_is_an_outage_and_records_wait_for_a_writable_one(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """Mid-failover, new connections may reach a standby (or a server put in read-only mode):
    "cannot execute INSERT in a read-only transaction" is the store being unavailable for now,
    not records it refuses, so they wait for a writable server instead of being dropped (and an
    API call answers 503, not 500)."""
    url = postgres_server.new_database()
    database = url.rsplit("/", 1)[1]
    store = await PostgresStore.open(url)
    writer = RecordWriter(store, RecordsSettings(flush_interval_s=0.05))
    records = [
        RequestRecord(
            request_id=f"ro_{n}",
            created_at=1000.0 + n,
            key_id=None,
            model_requested="m",
            model_used="m",
            provider="p",
            status=200,
            stream=False,
            cost_usd=Decimal("0.001"),
        )
        for n in range(5)
    ]
    try:
        await asyncio.to_thread(
            postgres_server.psql, f"ALTER DATABASE {database} SET default_transaction_read_only = on"
        )
        await store._pool.expire_connections()  # the failover: the pool connects again
        for record in records:
            writer.submit(record)
        await writer.flush()
        assert (writer.pending, writer.rejected, writer.written) == (5, 0, 0)
        with pytest.raises(StoreUnavailable):
            await store.insert_key(KeyRow("k_ro", "ro", "fg-ro…", "hash_ro", False, 1000.0))
        # The same for the code that meets the driver's own error (the ledger shipper, the edge).
        with pytest.raises(asyncpg.PostgresError) as refused:
            await store._pool.execute(
                "INSERT INTO feedback (request_id, key_id, created_at, score) VALUES ('r', 'k', 0, 0)"
            )
        assert is_outage(refused.value) and outage_error(refused.value) is not None
        await asyncio.to_thread(
            postgres_server.psql, f"ALTER DATABASE {database} RESET default_transaction_read_only"
        )
        await store._pool.expire_connections()  # writable again
        await writer.flush()
        assert (writer.pending, writer.written) == (0, 5)
        assert await store.count_records() == 5
    finally:
        await writer.close()
        await store.close()


async def test_a_pooled_connection_goes_back_without_a_reset_query_but_never_in_a_transaction(
    shared_urls: SharedUrls,  # noqa: F811
) -> None:
    # One connection, so the second acquire gets the first's back; a plain connection watches
    # what that backend was last sent.
    store = await PostgresStore.open(shared_urls.postgres, pool_size=1)
    watcher = await asyncpg.connect(shared_urls.postgres)
    last_query = "SELECT query FROM pg_stat_activity WHERE pid = $1"
    try:
        async with store._pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SELECT 1 AS the_last_query")
        assert await watcher.fetchval(last_query, backend) == "SELECT 1 AS the_last_query"
        async with store._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            # Given back mid-transaction (a cancelled request): rolled back all the same.
        assert await watcher.fetchval(last_query, backend) == "ROLLBACK"
        async with store._pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await watcher.close()
        await store.close()


async def test_keys_and_records(pg: PostgresStore, shared_urls: SharedUrls) -> None:  # noqa: F811
    keys = KeyStore(pg)
    key, raw = await keys.create("alice", credits_nano=5_000)
    assert (await keys.verify(raw)) == key
    assert (await pg.accounts.get_account(key.id)).balance_nano == 5_000  # type: ignore[union-attr]
    record = RequestRecord("req_1", 1000.0, key.id, "m", "m", "sim", 200, False, 10, 5, Decimal("0.00082"))
    record.route = "smart"
    other = RequestRecord("req_2", 2000.0, None, "m2", None, None, 502, True, error="boom")
    assert await pg.insert_records([record, other]) == 2
    assert await pg.insert_records([record]) == 0  # a retried batch never duplicates
    assert (await pg.get_record("req_1")) == record
    assert await pg.count_records() == 2
    # Totalled as `faregate usage` and the dashboard total them (Analytics.breakdown).
    analytics = await PostgresAnalytics.open(shared_urls.postgres)
    try:
        summary = await analytics.breakdown(Slice(0.0, 3000.0), "model")
        assert [(g.group, g.totals.requests, g.totals.errors, g.totals.cost) for g in summary] == [
            ("m", 1, 0, Decimal("0.00082")),
            ("m2", 1, 1, Decimal(0)),
        ]
        assert [g.group for g in await analytics.breakdown(Slice(1500.0, 3000.0), "key")] == [None]
        assert [
            (g.group, g.totals.requests) for g in await analytics.breakdown(Slice(0.0, 3000.0), "route")
        ] == [
            ("smart", 1),
            (None, 1),
        ]
    finally:
        await analytics.close()
    assert await keys.revoke("alice") and await keys.verify(raw) is None


async def test_the_alerts_that_fired_are_kept_for_the_next_start(
    pg: PostgresStore,
    shared_urls: SharedUrls,  # noqa: F811
) -> None:
    """The shared store keeps what the posting instance said was firing (as SQLite does:
    tests/test_alerts.py), a subject of any text or none, one row per rule and subject."""
    analytics = await PostgresAnalytics.open(shared_urls.postgres)
    try:
        memory = PostgresAlertMemory(analytics.pool)
        spend = FiredAlert("spend", 'k"1', "bot (fg-x)", 1.5, 1000.0, 1060.0)
        slow = FiredAlert("slow", None, None, 2500.0, 900.0, 900.0)
        await memory.remember(spend)
        await memory.remember(slow)
        await memory.remember(FiredAlert("spend", 'k"1', "bot (fg-x)", 2.5, 1000.0, 1060.0))
        by_rule = {a.rule: a for a in await memory.fired()}
        assert by_rule == {
            "spend": FiredAlert("spend", 'k"1', "bot (fg-x)", 2.5, 1000.0, 1060.0),
            "slow": slow,
        }
        await memory.forget("spend", 'k"1')
        await memory.forget("slow", "")  # no subject is not an empty one
        assert await memory.fired() == [slow]
        await memory.forget("slow", None)
        assert await memory.fired() == []
    finally:
        await analytics.close()


async def test_apply_ledger_is_idempotent(pg: PostgresStore) -> None:
    key, _ = await KeyStore(pg).create("t")
    rows = [LedgerRow("topup_1", key.id, "topup", 700, 1.0), LedgerRow("topup_2", key.id, "topup", 300, 2.0)]
    assert await pg.accounts.apply_ledger(rows) == 2
    assert await pg.accounts.apply_ledger(rows) == 0  # shipped twice: nothing moves the second time
    assert (await pg.accounts.get_account(key.id)).balance_nano == 1_000 == await ledger_sum(pg, key.id)  # type: ignore[union-attr]
    with pytest.raises(Exception, match="append-only"):
        await pg._pool.execute("DELETE FROM ledger")


# -- reservations in Redis -------------------------------------------------------------------


async def test_concurrent_reservations_never_overspend(pg: PostgresStore, shared: SharedAccounts) -> None:
    key, _ = await KeyStore(pg).create("t", credits_nano=10_000_000)
    results = await asyncio.gather(*(shared.reserve(ask(key.id, i, 1_000_000)) for i in range(200)))
    assert sum(isinstance(r, Admitted) for r in results) == 10
    assert {r.reason for r in results if isinstance(r, Refused)} == {"credits"}
    await shared.flush()
    assert (await pg.accounts.get_account(key.id)).balance_nano == 0 == await ledger_sum(pg, key.id)  # type: ignore[union-attr]
    assert (await shared.audit()).clean


async def test_ledger_rows_page_after_an_entry(pg: PostgresStore, shared: SharedAccounts) -> None:
    key, _ = await KeyStore(pg).create("paged", credits_nano=1)
    other, _ = await KeyStore(pg).create("other", credits_nano=1)
    for n in range(5):
        await shared.credit(LedgerRow(f"topup_{n}", key.id, "topup", 10 + n, time.time()))
    await shared.flush()
    newest = [r.entry_id for r in await pg.accounts.ledger_rows(key.id, 100)]
    assert newest[:5] == [f"topup_{n}" for n in reversed(range(5))] and len(newest) == 6
    page = [r.entry_id for r in await pg.accounts.ledger_rows(key.id, 2, after="topup_3")]
    assert page == ["topup_2", "topup_1"]
    assert [r.entry_id for r in await pg.accounts.ledger_rows(key.id, 100, after=newest[-1])] == []
    other_entry = (await pg.accounts.ledger_rows(other.id, 1))[0].entry_id
    for after in ("topup_nope", other_entry):
        with pytest.raises(UnknownLedgerEntry):
            await pg.accounts.ledger_rows(key.id, 2, after=after)


async def test_settle_release_expire_and_late_settle(pg: PostgresStore, shared: SharedAccounts) -> None:
    key, _ = await KeyStore(pg).create("t", credits_nano=10_000_000)
    hour = hour_of(time.time())
    for n in (1, 2):
        assert isinstance(await shared.reserve(ask(key.id, n, 4_000_000)), Admitted)
    assert isinstance(await shared.reserve(ask(key.id, 3, 1_000_000, ttl=0.0)), Admitted)
    holds = await shared.holds(key.id)
    assert sorted(h.hold_id for h in holds) == ["hold_1", "hold_2", "hold_3"]
    await shared.settle(key.id, HoldRef("hold_1", "req_1", hour, 100, UNLIMITED), 1_234_567, 10)
    await shared.release(key.id, HoldRef("hold_2", "req_2", hour, 100, UNLIMITED))
    assert await shared.sweep() == 1  # hold_3 had expired
    await shared.settle(key.id, HoldRef("hold_3", "req_3", hour, 100, UNLIMITED), 2_000, 10)  # late
    balance = await shared.balance(key.id)
    assert balance is not None and balance.held_nano == 0
    assert balance.balance_nano == 10_000_000 - 1_234_567 - 2_000
    await shared.flush()
    rows = {r.entry_id: r for r in await pg.accounts.ledger_rows(key.id, 100)}
    assert rows["hold_3:close"].note is not None and "expired" in rows["hold_3:close"].note
    assert rows["hold_3:late"].amount_nano == -2_000 and rows["hold_1:close"].cost_nano == 1_234_567
    assert (await pg.accounts.get_account(key.id)).balance_nano == balance.balance_nano  # type: ignore[union-attr]
    assert await pg.accounts.open_holds_count() == 0
    assert (await shared.audit()).clean


async def test_budgets_and_rate_limits_live_in_redis(pg: PostgresStore, shared: SharedAccounts) -> None:
    key, _ = await KeyStore(pg).create("t", credits_nano=10_000_000_000)
    window = window_of(Budget("day", "calendar", 2_500_000), time.time())
    results = [await shared.reserve(ask(key.id, i, 1_000_000, windows=(window,))) for i in range(3)]
    refused = results[2]
    assert (
        isinstance(refused, Refused) and refused.reason == "budget" and refused.window_spent_nano == 2_000_000
    )
    limits = Limits(2, 1000)
    results = [await shared.reserve(ask(key.id, 10 + i, 1, limits=limits)) for i in range(3)]
    assert isinstance(results[0], Admitted) and results[0].rate is not None
    assert results[0].rate.requests is not None and results[0].rate.requests.remaining == 1
    rate = results[2]
    assert isinstance(rate, Refused) and rate.rate is not None and rate.rate.what == "requests"
    assert 25 < rate.rate.retry_after_s <= 30


async def test_revocation_is_seen_by_the_reservation(pg: PostgresStore, shared: SharedAccounts) -> None:
    keys = KeyStore(pg)
    key, _ = await keys.create("t", credits_nano=1_000)
    assert isinstance(await shared.reserve(ask(key.id, 1, 1)), Admitted)
    await keys.revoke(key.id)
    await shared.key_changed(key.id, revoked=True)
    refused = await shared.reserve(ask(key.id, 2, 1))
    assert isinstance(refused, Refused) and refused.reason == "revoked"


async def test_redis_data_loss_releases_its_holds_exactly_once(
    pg: PostgresStore,
    shared: SharedAccounts,
    redis_server: RedisServer,  # noqa: F811
    shared_urls: SharedUrls,  # noqa: F811
) -> None:
    key, _ = await KeyStore(pg).create("t", credits_nano=10_000_000)
    hour = hour_of(time.time())
    assert isinstance(await shared.reserve(ask(key.id, 1, 6_000_000)), Admitted)
    assert isinstance(await shared.reserve(ask(key.id, 2, 3_000_000)), Admitted)
    await shared.settle(key.id, HoldRef("hold_2", "req_2", hour, 100, UNLIMITED), 1_000_000, 10)
    await shared.flush()
    # Redis restarted without persistence: hold_1 is gone with everything else.
    redis_server.cli("-n", shared_urls.redis.rsplit("/", 1)[1], "FLUSHDB")
    await shared.shipper.start()  # the consumer group went too; a running shipper recreates it
    # The request that held hold_1 finishes now: its cost is charged, its hold released once.
    await shared.settle(key.id, HoldRef("hold_1", "req_1", hour, 100, UNLIMITED), 2_000_000, 10)
    balance = await shared.balance(key.id)
    assert balance is not None and balance.balance_nano == 10_000_000 - 1_000_000 - 2_000_000
    await shared.flush()
    rows = {r.entry_id: r for r in await pg.accounts.ledger_rows(key.id, 100)}
    assert "lost" in (rows["hold_1:close"].note or "") and rows["hold_1:late"].amount_nano == -2_000_000
    assert (await pg.accounts.get_account(key.id)).balance_nano == balance.balance_nano  # type: ignore[union-attr]
    assert await shared.redis.exists(account_key(key.id))
    assert (await shared.audit()).clean


async def test_a_settlement_retried_after_redis_lost_its_data_is_not_charged_twice(
    pg: PostgresStore,
    shared: SharedAccounts,
    redis_server: RedisServer,  # noqa: F811
    shared_urls: SharedUrls,  # noqa: F811
) -> None:
    """A settlement that landed unseen (its answer lost: kept, spooled) is retried; if Redis lost
    its data in between, its memory of the settled hold went with it, and the retry, finding the
    hold gone, charged it again as a late settlement though PostgreSQL's ledger had the charge.
    Here hold_1's settlement and hold_2's late one landed and were shipped; both are retried."""
    key, _ = await KeyStore(pg).create("t", credits_nano=10_000_000)
    hour = hour_of(time.time())
    assert isinstance(await shared.reserve(ask(key.id, 1, 4_000_000)), Admitted)
    assert isinstance(await shared.reserve(ask(key.id, 2, 1_000_000, ttl=0.0)), Admitted)
    assert await shared.sweep() == 1  # hold_2 expired: released
    landed = [
        (HoldRef(f"hold_{n}", f"req_{n}", hour, 100, UNLIMITED), cost)
        for n, cost in ((1, 1_000_000), (2, 2_000))
    ]
    for ref, cost in landed:
        await shared.settle(key.id, ref, cost, 10)
    await shared.flush()
    redis_server.cli("-n", shared_urls.redis.rsplit("/", 1)[1], "FLUSHDB")
    await shared.shipper.start()  # the consumer group went too; a running shipper recreates it
    for ref, cost in landed:
        await shared.settle(key.id, ref, cost, 10)
    balance = await shared.balance(key.id)
    assert balance is not None and balance.balance_nano == 10_000_000 - 1_000_000 - 2_000
    await shared.flush()
    assert await ledger_sum(pg, key.id) == balance.balance_nano
    assert (await shared.audit()).clean


async def test_an_unreachable_redis_refuses_with_503_not_free_spend(pg: PostgresStore) -> None:
    from faregate.accounts.metered import AccountsUnavailable, MeteredAdmission, PolicyCache
    from faregate.config import AccountsSettings
    from faregate.server.parse import parse_chat_request
    from servers import run_redis

    keys = KeyStore(pg)
    key, _ = await keys.create("t", credits_nano=1_000_000)
    with run_redis() as doomed:
        accounts = await SharedAccounts.connect(doomed.new_database(), pg)
    # The server is gone now.
    admission = MeteredAdmission(accounts, PolicyCache(pg.accounts), AccountsSettings(), 60.0)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    with pytest.raises(AccountsUnavailable) as refused:
        await admission.admit(key, request, Decimal("0.0001"), 10)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    await accounts.redis.aclose(close_connection_pool=True)


async def test_close_ends_even_when_redis_stops_answering(
    pg: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that stops answering (frozen, or gone without closing its sockets) must not hold
    shutdown: close() gives up on it at its deadline."""
    from servers import run_redis

    with run_redis() as frozen:
        accounts = await SharedAccounts.connect(frozen.new_database(), pg, flush_interval_s=0.02)
        await accounts.start()
        key, _ = await KeyStore(pg).create("t", credits_nano=1_000)
        assert isinstance(await accounts.reserve(ask(key.id, 1, 1)), Admitted)
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            await asyncio.wait_for(accounts.close(timeout_s=1.0), 60)
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
    # Given up at the deadline (the lease's close on the frozen Redis used it up), not carried on
    # (its flush and its consumer's removal took 10 s more when a cancelled stop went on).
    assert "gave up waiting for the ledger shipper" in caplog.text


async def test_a_cache_hit_whose_count_redis_did_not_answer_takes_nothing_from_the_key(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit's rate-limit count sent to a frozen Redis times out (503), and Redis ran it once it
    answered again: the key's one request of the minute was gone for an answer never served. It is
    given back (Redis's socket timeout shrunk to half a second, the give-back's pause to 0.05 s)."""
    from faregate.accounts import hit_give_backs
    from faregate.accounts import shared as shared_accounts
    from faregate.accounts.ratelimit import RateState
    from servers import run_redis

    monkeypatch.setattr(shared_accounts, "COMMAND_TIMEOUT_S", 0.5)
    monkeypatch.setattr(hit_give_backs, "RETRY_S", 0.05)
    with run_redis() as frozen:
        accounts = await SharedAccounts.connect(frozen.new_database(), pg)
        try:
            key, _ = await KeyStore(pg).create("t", credits_nano=1_000)
            assert isinstance(await accounts.take_request(key.id, None), RateState)  # loaded, nothing taken
            os.kill(frozen.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(accounts.take_request(key.id, 1), 60)
            finally:
                os.kill(frozen.process.pid, signal.SIGCONT)
            for _ in range(1200):
                if not accounts.give_backs.pending:
                    break
                await asyncio.sleep(0.05)
            assert not accounts.give_backs.pending
            # The one request a minute is still there for the next hit.
            assert isinstance(await accounts.take_request(key.id, 1), RateState)
        finally:
            await accounts.close()


async def test_a_cache_hit_count_retried_on_a_fresh_connection_is_taken_once(
    pg: PostgresStore,
    shared: SharedAccounts,
) -> None:
    """redis-py sends a script again on a fresh connection when the first one was closed under it
    (store.redis.connect), which may be after it ran: the same count is not taken twice."""
    from faregate.accounts.ratelimit import RateRefusal

    key, _ = await KeyStore(pg).create("t", credits_nano=1_000)
    first = await shared.ledger.take_request(key.id, 2, 0, "hit_same")
    again = await shared.ledger.take_request(key.id, 2, 0, "hit_same")
    assert first[0] == again[0] == "ok" and again[1] == pytest.approx(first[1], abs=0.01)
    assert not isinstance(await shared.take_request(key.id, 2), RateRefusal)  # one left of two


async def test_close_never_waits_forever_on_a_stuck_step(
    pg: PostgresStore,
    shared_urls: SharedUrls,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = await SharedAccounts.connect(shared_urls.redis, pg, flush_interval_s=0.02)
    await accounts.start()
    real_close = accounts.shipper.close

    async def stuck() -> None:
        await asyncio.Event().wait()  # e.g. a read on a socket that never answers

    accounts.shipper.close = stuck  # type: ignore[method-assign]
    await asyncio.wait_for(accounts.close(timeout_s=0.5), 60)
    assert "gave up waiting for the ledger shipper" in caplog.text
    await real_close()


async def test_a_cache_hit_takes_one_request_from_the_shared_bucket(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    from faregate.accounts.ratelimit import RateRefusal, RateState

    key, _ = await KeyStore(pg).create("t", credits_nano=1_000_000)
    taken = [await shared.take_request(key.id, 3) for _ in range(4)]
    assert all(isinstance(t, RateState) for t in taken[:3])
    refused = taken[3]
    assert isinstance(refused, RateRefusal) and refused.what == "requests" and refused.retry_after_s > 0
    # It shares the bucket reservations use: a reservation now is refused for requests too.
    outcome = await shared.reserve(ask(key.id, 1, 1_000, limits=Limits(3, None)))
    assert isinstance(outcome, Refused) and outcome.reason == "rate"


async def test_dead_instances_holds_are_released_by_the_sweep(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    key, _ = await KeyStore(pg).create("t", credits_nano=1_000_000)
    ledger = shared.ledger
    await ledger.renew_lease("inst_deadbeef0000", 60, time.time(), "h", 1)
    made = await ledger.reserve(
        key.id, "hold_d", "req_d", 600_000, 1, 1, [], 600.0, None, None, "inst_deadbeef0000"
    )
    assert made.status == "ok"
    assert await shared.sweep() == 0  # its lease is alive
    await ledger.end_lease("inst_deadbeef0000")
    assert await shared.sweep() == 1
    balance = await shared.balance(key.id)
    assert balance is not None and balance.balance_nano == 1_000_000 and balance.held_nano == 0
    await shared.flush()
    assert (await shared.audit()).clean


async def test_a_flush_right_after_redis_lost_its_data_starts_the_outbox_group_again(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # The audit flushes the outbox; right after a Redis restart it used to meet NOGROUP (a 500).
    await shared.redis.flushdb()
    await shared.flush()
    key, _ = await KeyStore(pg).create("t", credits_nano=1_000)
    assert isinstance(await shared.reserve(ask(key.id, 1, 500)), Admitted)
    await shared.flush()
    assert (await shared.audit()).clean


async def test_an_overrun_token_bucket_says_how_long_to_wait_as_the_embedded_store_does(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # A request that used more tokens than it reserved leaves the bucket below zero; the next
    # refusal must wait for that debt too and still send the tokens headers (the Lua script
    # used -1 for "no such limit", so every negative level read as "not limited").
    key, _ = await KeyStore(pg).create("t", credits_nano=1_000_000)
    limits = Limits(None, 1000)
    hour = hour_of(time.time())
    made = await shared.reserve(ReserveAsk(key.id, "hold_o", "req_o", 1, 1000, hour, (), limits, 60.0))
    assert isinstance(made, Admitted)
    await shared.settle(key.id, HoldRef("hold_o", "req_o", hour, 1000, limits), 1, 1600)  # 600 over
    refused = await shared.reserve(ReserveAsk(key.id, "hold_p", "req_p", 1, 100, hour, (), limits, 60.0))
    assert isinstance(refused, Refused) and refused.rate is not None and refused.rate.what == "tokens"
    # (100 + 600) tokens at 1000 a minute: about 42 s, not the 6 s that 100 alone would take.
    assert 40 < refused.rate.retry_after_s <= 42
    tokens = refused.rate.state.tokens
    assert tokens is not None and tokens.remaining == 0 and tokens.reset_s > 60


async def test_a_policy_change_writes_only_the_fields_it_names(pg: PostgresStore) -> None:
    key, _ = await KeyStore(pg).create("t")
    assert await pg.accounts.set_policy(key.id, {"requests_per_minute": 7, "max_request_nano": 5})
    assert await pg.accounts.set_policy(
        key.id, {"budgets": '[["day","calendar",9]]', "max_request_nano": None}
    )
    account = await pg.accounts.get_account(key.id)
    assert account is not None and account.requests_per_minute == 7 and account.max_request_nano is None
    assert account.budgets == '[["day","calendar",9]]'
    assert not await pg.accounts.set_policy("key_none", {"requests_per_minute": 1})


async def test_a_top_up_applied_while_postgresql_lags_is_answered_as_done(
    pg: PostgresStore, shared: SharedAccounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The credit is in Redis (and in its outbox, on its way to the ledger) before the flush; an
    # error after it told the operator it had failed, and the retry credited the key twice.
    from faregate.accounts.metered import PolicyCache
    from faregate.accounts.service import AccountsService
    from faregate.config import AccountsSettings

    keys = KeyStore(pg)
    service = AccountsService(keys, shared, PolicyCache(pg.accounts), AccountsSettings())
    key, _ = await keys.create("t", credits_nano=0)

    async def stuck(timeout_s: float = 10.0) -> bool:
        return False  # PostgreSQL does not take the entries in time

    monkeypatch.setattr(shared.shipper, "flush", stuck)
    view = await service.add_credits(key.id, 5_000, "top-up")
    assert view.balance_nano == 5_000
    monkeypatch.undo()
    await shared.flush()
    assert (await pg.accounts.get_account(key.id)).balance_nano == 5_000 == await ledger_sum(pg, key.id)  # type: ignore[union-attr]


async def test_a_key_is_created_with_its_policy_in_one_transaction(pg: PostgresStore) -> None:
    # The policy is written with the key, its account and its grant (AccountsService.create_key):
    # never a key with credits but without the policy it was asked with.
    policy = {"requests_per_minute": 60, "max_request_nano": 5, "budgets": '[["day","calendar",9]]'}
    key, _ = await KeyStore(pg).create("t", credits_nano=1_000, policy=policy)
    account = await pg.accounts.get_account(key.id)
    assert account is not None and account.balance_nano == 1_000 and account.requests_per_minute == 60
    assert account.max_request_nano == 5 and account.budgets == '[["day","calendar",9]]'
    assert account.tokens_per_minute is None


async def test_a_cache_hit_of_a_revoked_key_is_refused_as_a_reservation_is(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # The revocation mark in Redis is checked by the cache hit's script too (it only took a
    # request from the bucket, so a key revoked elsewhere got cached answers until its instance
    # heard of the revocation), and an account not yet in Redis is loaded with its revocation.
    from faregate.accounts.ratelimit import RateState

    keys = KeyStore(pg)
    loaded, _ = await keys.create("t", credits_nano=1_000)
    unloaded, _ = await keys.create("u", credits_nano=1_000)
    assert isinstance(await shared.take_request(loaded.id, 3), RateState)
    for key in (loaded, unloaded):
        await keys.revoke(key.id)
        await shared.key_changed(key.id, revoked=True)
        for rpm in (3, None):
            refused = await shared.take_request(key.id, rpm)
            assert isinstance(refused, Refused) and refused.reason == "revoked", (key.id, rpm, refused)


async def test_a_top_up_past_the_largest_exact_balance_is_refused(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # Lua reads a balance as a double: past 2**53-1 nano-dollars it is no longer exact. A top-up
    # that would take the balance there (counting its holds) is refused, and nothing is applied.
    from faregate.accounts.metered import PolicyCache
    from faregate.accounts.money import MAX_NANO
    from faregate.accounts.service import AccountsService
    from faregate.config import AccountsSettings
    from faregate.errors import InvalidRequest

    keys = KeyStore(pg)
    service = AccountsService(keys, shared, PolicyCache(pg.accounts), AccountsSettings())
    key, _ = await keys.create("t", credits_nano=MAX_NANO - 10)
    assert isinstance(await shared.reserve(ask(key.id, 1, 4)), Admitted)
    with pytest.raises(InvalidRequest) as refused:
        await service.add_credits(key.id, 11)
    assert refused.value.status == 400 and "0.00000001" in refused.value.message
    assert (await service.add_credits(key.id, 10)).balance_nano == MAX_NANO - 4
    await shared.release(key.id, HoldRef("hold_1", "req_1", 0, 100, UNLIMITED))
    with pytest.raises(InvalidRequest):
        await service.add_credits(key.id, 1)
    await shared.flush()
    assert (await pg.accounts.get_account(key.id)).balance_nano == MAX_NANO == await ledger_sum(pg, key.id)  # type: ignore[union-attr]


async def test_a_revoked_key_over_its_request_cap_is_told_401_not_402(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # The per-request cap was checked before Redis was asked: a key revoked elsewhere, still in
    # this process's key cache, got 402 request_budget_exceeded where any other request gets 401.
    from faregate.accounts.metered import MeteredAdmission, PolicyCache
    from faregate.config import AccountsSettings
    from faregate.errors import AuthenticationFailed
    from faregate.server.parse import parse_chat_request

    keys = KeyStore(pg)
    key, _ = await keys.create("t", credits_nano=10_000_000_000, policy={"max_request_nano": 1_000_000})
    admission = MeteredAdmission(shared, PolicyCache(pg.accounts), AccountsSettings(), 60.0)
    await keys.revoke(key.id)
    await shared.key_changed(key.id, revoked=True)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    with pytest.raises(AuthenticationFailed):
        await admission.admit(key, request, Decimal("0.0011"), 10)


async def test_a_retried_revocation_marks_redis_when_the_first_could_not(
    pg: PostgresStore, shared: SharedAccounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL is marked first, then Redis, then the broadcast. When the Redis step failed the
    # operator got 503, and the retry answered "already revoked" without touching Redis: every
    # instance still caching the key kept admitting it (Redis had no revocation mark).
    from faregate.accounts.metered import PolicyCache
    from faregate.accounts.ratelimit import RateState
    from faregate.accounts.service import AccountsService
    from faregate.config import AccountsSettings
    from faregate.store.protocols import StoreUnavailable

    keys = KeyStore(pg)
    service = AccountsService(keys, shared, PolicyCache(pg.accounts), AccountsSettings())
    key, _ = await keys.create("t", credits_nano=1_000)
    assert isinstance(await shared.take_request(key.id, None), RateState)  # its account is in Redis
    told = asyncio.Event()
    shared.on_key_changed(lambda key_id: told.set() if key_id == key.id else None)

    async def redis_down(key_id: str) -> None:
        raise StoreUnavailable("Redis: connection reset")

    monkeypatch.setattr(shared.ledger, "revoke", redis_down)
    with pytest.raises(StoreUnavailable):
        await service.revoke(key.id)
    monkeypatch.undo()
    assert isinstance(await shared.take_request(key.id, None), RateState)  # the half-done revocation
    told.clear()
    await service.revoke(key.id)  # the retry finishes it
    refused = await shared.take_request(key.id, None)
    assert isinstance(refused, Refused) and refused.reason == "revoked"
    refused = await shared.reserve(ask(key.id, 1, 1))
    assert isinstance(refused, Refused) and refused.reason == "revoked"
    await asyncio.wait_for(told.wait(), 5)  # and every instance was told again


async def test_a_rename_with_a_policy_change_is_one_transaction(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # The name was written (and committed) before the policy: a failure writing the policy
    # answered 503 with the key already renamed. Both are one transaction now.
    from faregate.accounts.metered import PolicyCache
    from faregate.accounts.service import AccountsService, PolicyChange
    from faregate.config import AccountsSettings

    keys = KeyStore(pg)
    service = AccountsService(keys, shared, PolicyCache(pg.accounts), AccountsSettings())
    key, _ = await keys.create("before")
    await pg._pool.execute(
        "CREATE FUNCTION policy_fails() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
        " CREATE TRIGGER policy_fails BEFORE UPDATE OF requests_per_minute ON accounts"
        " FOR EACH ROW EXECUTE FUNCTION policy_fails()"
    )
    with pytest.raises(Exception, match="disk full"):
        await service.update(key.id, PolicyChange(requests_per_minute=5), "after")
    view = await service.view(key.id)
    assert view.key.name == "before" and view.policy.requests_per_minute is None
    await pg._pool.execute("DROP TRIGGER policy_fails ON accounts")
    view = await service.update(key.id, PolicyChange(requests_per_minute=5), "after")
    assert view.key.name == "after" and view.policy.requests_per_minute == 5


async def test_a_cache_hit_and_a_retried_reservation_carry_every_rate_limit_header(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # A hit carried only the requests headers; a reservation retried on a fresh connection (the
    # script's "already reserved" branch) carried none, as if the key had no limits.
    from faregate.accounts.admission import Hold
    from faregate.accounts.metered import MeteredAdmission, PolicyCache
    from faregate.accounts.ratelimit import rate_headers
    from faregate.config import AccountsSettings, TierLimits
    from faregate.server.parse import parse_chat_request

    key, _ = await KeyStore(pg).create("t", credits_nano=1_000_000)
    settings = AccountsSettings(standard=TierLimits(requests_per_minute=60, tokens_per_minute=1000))
    admission = MeteredAdmission(shared, PolicyCache(pg.accounts), settings, 60.0)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    hold: Hold = await admission.admit(key, request, Decimal("0.0001"), 900)
    assert len(hold.headers) == 6
    hit = await admission.count_hit(key, request)
    assert set(hit) == set(hold.headers) and int(hit["x-ratelimit-remaining-tokens"]) < 1000
    limits = Limits(60, 1000)
    first = await shared.reserve(ask(key.id, 7, 1_000, limits=limits))
    again = await shared.reserve(ask(key.id, 7, 1_000, limits=limits))
    assert isinstance(first, Admitted) and isinstance(again, Admitted)
    assert (
        set(rate_headers(again.rate)) == set(rate_headers(first.rate)) and len(rate_headers(again.rate)) == 6
    )
    # Read, not taken again: the retry left the buckets as the first call did.
    assert again.rate is not None and first.rate is not None and again.rate.requests is not None
    assert again.rate.requests.remaining >= first.rate.requests.remaining  # type: ignore[union-attr]
    await admission.settle(hold, Decimal("0.00005"), 1900)  # an overrun: the token level below 0
    overrun = await admission.count_hit(key, request)
    assert overrun["x-ratelimit-remaining-tokens"] == "0"
    await admission.settlements.close()


async def test_a_dead_instance_with_many_holds_is_released_in_bounded_batches(
    pg: PostgresStore, shared: SharedAccounts
) -> None:
    # One script released every hold of a dead instance: with very many, Redis served no other
    # client (no reservation of any instance) until it was done. Now at most `limit` a script.
    key, _ = await KeyStore(pg).create("t", credits_nano=1_000_000)
    ledger = shared.ledger
    for inst in ("inst_deadbeef0001", "inst_deadbeef0002", "inst_deadbeef0003"):
        await ledger.renew_lease(inst, 60, time.time(), "h", 1)
    for inst in ("inst_deadbeef0001", "inst_deadbeef0002"):
        for n in range(250):
            made = await ledger.reserve(
                key.id, f"hold_{inst}_{n}", None, 1_000, 1, 1, [], 600.0, None, None, inst
            )
            assert made.status == "ok"
    assert await ledger.redis.scard("fg:ih:inst_deadbeef0001") == 250
    for inst in ("inst_deadbeef0001", "inst_deadbeef0002", "inst_deadbeef0003"):
        await ledger.end_lease(inst)
    # Both are dead. One script releases at most its limit, across instances.
    assert await ledger._run("sweep", [100]) == 100
    assert await ledger.sweep(limit=100) == 500 - 100  # the rest, 100 a script
    # An operator's release: in batches too.
    for n in range(250):
        await ledger.reserve(
            key.id, f"hold_op_{n}", None, 1_000, 1, 1, [], 600.0, None, None, "inst_deadbeef0003"
        )
    assert await ledger._run("release_instance", ["inst_deadbeef0003", "by hand", 100]) == 100
    assert await ledger.release_instance("inst_deadbeef0003", "by hand", limit=100) == 150
    assert await ledger.redis.smembers("fg:instances") == {shared.instance_id}  # the dead are forgotten
    balance = await shared.balance(key.id)
    assert balance is not None and balance.balance_nano == 1_000_000 and balance.held_nano == 0
    await shared.flush()
    assert (await shared.audit()).clean


class PartitionableLink:
    """A TCP relay to a server on loopback whose open connections can be cut off for good without
    being closed (a partition, a failover that left them open), while new ones get through."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.silent = False  # new connections too pass nothing (the server is frozen, as a client sees it)
        self._links: list[list[bool]] = []  # per connection: [cut]
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.silent = True
        self.cut()

    def cut(self) -> None:
        for link in self._links:
            link[0] = True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        link = [self.silent]
        self._links.append(link)
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: list[bool]) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if not link[0]:
                    sink.write(data)
                    await sink.drain()
        sink.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_read_given_up_on_a_silent_connection_leaves_the_pool_to_the_next(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request's read is given up after REQUEST_READ_TIMEOUT_S; its connection, silent for good
    (a partition, a failover that left it open), was kept until PostgreSQL took the cancel, which
    it never does: up to the statement timeout twice over. A pool's worth of such reads, and every
    request failed for minutes though PostgreSQL answered new connections at once. The bound
    shrunk to a second, a pool of one connection."""
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "REQUEST_READ_TIMEOUT_S", 1.0)
    host_port, database = shared_urls.postgres.rsplit("/", 1)
    link = PartitionableLink(int(host_port.rsplit(":", 1)[1]))
    relayed = f"{host_port.rsplit(':', 1)[0]}:{await link.start()}/{database}"
    store = await PostgresStore.open(relayed, pool_size=1)
    try:
        assert await store.find_key("nobody") is None
        link.cut()
        with pytest.raises(StoreUnavailable, match="did not answer"):
            await store.find_key("nobody")
        assert await store.find_key("nobody") is None  # on a new connection
    finally:
        await link.close()
        await store.close()


async def test_admin_and_feedback_statements_against_a_frozen_postgresql_are_a_prompt_503(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An admin's key list, key change or ledger page, and a client's feedback score, waited for
    the pool's statement timeout (60 s), and as long again for the cancel, against a PostgreSQL that
    stopped answering: they give up as a request's reads do. The bound shrunk to a second, the
    statement timeout to five: each must say it gave up at the bound."""
    from faregate.store.feedback import Feedback
    from faregate.store.postgres import accounts as pg_accounts
    from faregate.store.postgres import feedback as pg_feedback
    from faregate.store.postgres import store as pg_store
    from faregate.store.postgres.feedback import PostgresFeedbackTable

    for module in (pg_store, pg_accounts, pg_feedback):
        monkeypatch.setattr(module, "REQUEST_READ_TIMEOUT_S", 1.0, raising=False)
    monkeypatch.setattr(pg_store, "COMMAND_TIMEOUT_S", 5.0)
    host_port, database = shared_urls.postgres.rsplit("/", 1)
    link = PartitionableLink(int(host_port.rsplit(":", 1)[1]))
    relayed = f"{host_port.rsplit(':', 1)[0]}:{await link.start()}/{database}"
    store = await PostgresStore.open(relayed, pool_size=10)
    feedback = PostgresFeedbackTable(store._pool)
    key = KeyRow("key_frozen", "frozen", "fg-frozen", "hash_frozen", False, time.time(), None)
    try:
        await store.insert_key(key, 1_000)
        link.freeze()
        waits = {
            "list_keys": store.list_keys(),
            "insert_key": store.insert_key(
                KeyRow("key_2", "two", "fg-two", "hash_2", False, time.time(), None)
            ),
            "revoke_key": store.revoke_key(key.id, time.time()),
            "set_key_name": store.accounts.set_key_name(key.id, "renamed"),
            "set_policy": store.accounts.set_policy(key.id, {"requests_per_minute": 5}),
            "set_policy_and_name": store.accounts.set_policy(key.id, {"requests_per_minute": 5}, "renamed"),
            "ledger_rows": store.accounts.ledger_rows(key.id, 10),
            "ledger_rows_after": store.accounts.ledger_rows(key.id, 10, after="grant_x"),
            "feedback_upsert": feedback.upsert(
                Feedback("req_" + "0" * 32, key.id, time.time(), "up", None, None)
            ),
            "feedback_get": feedback.get("req_" + "0" * 32),
        }
        answers = dict(zip(waits, await asyncio.gather(*waits.values(), return_exceptions=True), strict=True))
        for name, answer in answers.items():
            assert isinstance(answer, StoreUnavailable), (name, answer)
            assert "did not answer within 1 s" in str(answer), (name, answer)
    finally:
        await link.close()
        await store.close()


async def test_a_record_write_on_a_silent_connection_is_given_up_and_written_on_a_new_one(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record writer's connection goes silent for good (a partition, a failover that left it
    open) while PostgreSQL answers new connections: its insert waited the pool's statement timeout
    and as long again for the cancel, two minutes in which no record was stored (nor could be
    given feedback). It is given up after RECORD_WRITE_TIMEOUT_S, its connection closed, and the
    batch written again on a new one, once. The bound shrunk to a second, a pool of one."""
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "RECORD_WRITE_TIMEOUT_S", 1.0)
    host_port, database = shared_urls.postgres.rsplit("/", 1)
    link = PartitionableLink(int(host_port.rsplit(":", 1)[1]))
    relayed = f"{host_port.rsplit(':', 1)[0]}:{await link.start()}/{database}"
    store = await PostgresStore.open(relayed, pool_size=1)
    writer = RecordWriter(store, RecordsSettings(flush_interval_s=60))

    def record(n: int) -> RequestRecord:
        return RequestRecord(f"silent_{n}", 1000.0 + n, None, "m", "m", "p", 200, False)

    try:
        writer.submit(record(0))
        await writer.flush()
        link.cut()
        writer.submit(record(1))
        async with asyncio.timeout(30):  # two minutes before
            await writer.flush()
        assert writer.pending == 1  # given up: kept for the next try
        await writer.flush()  # on a new connection
        assert writer.pending == 0 and await store.count_records() == 2
    finally:
        await link.close()
        await store.close()


# -- a start against a PostgreSQL that does not answer -----------------------------------------


async def test_a_start_against_a_server_that_never_answers_fails_with_a_message(
    postgres_server: PostgresServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts the connection and says nothing (frozen, a partition behind a proxy)
    held a start 60 s (asyncpg's connect timeout), then failed saying 'cannot connect to
    PostgreSQL: ' and nothing more. The bound shrunk to half a second here."""
    from faregate.store.postgres import pool as pg_pool

    monkeypatch.setattr(pg_pool, "CONNECT_TIMEOUT_S", 0.5)
    link = PartitionableLink(postgres_server.port)
    link.silent = True
    port = await link.start()
    try:
        with pytest.raises(StoreUnavailable, match=r"cannot connect to PostgreSQL: no answer within 0\.5 s"):
            await asyncio.wait_for(PostgresStore.open(f"postgresql://postgres@127.0.0.1:{port}/postgres"), 60)
    finally:
        await link.close()


async def test_a_server_that_stops_answering_during_the_schema_check_fails_the_start(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The migration connection has no statement timeout (for the migrations' sake): a server that
    answered the connection and then went silent held the start forever at its first statement.
    The steps before the migrations are bounded (shrunk to half a second here)."""
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "SCHEMA_STEP_TIMEOUT_S", 0.5)
    database = shared_urls.postgres.rsplit("/", 1)[1]
    link = PartitionableLink(int(shared_urls.postgres.rsplit(":", 1)[1].split("/")[0]))
    port = await link.start()
    real_connect = asyncpg.connect

    async def connect_then_freeze(*args: object, **kwargs: object) -> asyncpg.Connection:
        conn = await real_connect(*args, **kwargs)
        link.freeze()  # the pool's connection and this one both go silent
        return conn

    monkeypatch.setattr(pg_store.asyncpg, "connect", connect_then_freeze)
    try:
        with pytest.raises(StoreUnavailable, match="stopped answering while the schema was checked"):
            url = f"postgresql://postgres@127.0.0.1:{port}/{database}"
            await asyncio.wait_for(PostgresStore.open(url), 60)
    finally:
        await link.close()


async def test_a_start_waiting_for_another_instances_migration_says_so_and_then_starts(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "MIGRATION_WAIT_LOG_S", 0.2)
    monkeypatch.setattr(pg_store, "MIGRATION_LOCK_POLL_S", 0.05)
    caplog.set_level("INFO", logger="faregate.store.postgres")
    other = await asyncpg.connect(shared_urls.postgres)
    try:
        migrating = other.transaction()
        await migrating.start()
        await other.execute("SELECT pg_advisory_xact_lock(hashtext('faregate-schema-migrations'))")
        starting = asyncio.ensure_future(PostgresStore.open(shared_urls.postgres))
        for _ in range(600):
            if "for another instance to migrate the PostgreSQL schema" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "for another instance to migrate the PostgreSQL schema" in caplog.text
        assert not starting.done()
        await migrating.rollback()
        store = await asyncio.wait_for(starting, 60)
        assert await store.schema_versions() == [m.version for m in PG_MIGRATIONS]
        await store.close()
    finally:
        await other.close()


async def test_behind_pgbouncer_in_transaction_mode_the_store_and_the_dashboard_work(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """asyncpg keeps each statement prepared on the server connection it was prepared on; PgBouncer
    in transaction mode gives the next transaction another, where it 'does not exist', and refuses
    the dashboard pool's plan_cache_mode at connect ('unsupported startup parameter').
    store.postgres_transaction_pooling turns both off."""
    from servers import run_pgbouncer

    database = postgres_server.new_database().rsplit("/", 1)[1]
    with run_pgbouncer(postgres_server) as bouncer:
        url = bouncer.url(database)
        store = await PostgresStore.open(url, pool_size=6, transaction_pooling=True)
        analytics = await PostgresAnalytics.open(url, transaction_pooling=True)
        try:
            keys = KeyStore(store)
            made = [await keys.create(f"k{i}", credits_nano=1_000) for i in range(3)]
            found = await asyncio.gather(*(keys.verify(raw) for _ in range(30) for _, raw in made))
            assert found == [key for _ in range(30) for key, _ in made]
            record = RequestRecord("req_1", 1000.0, made[0][0].id, "m", "m", "sim", 200, False, 10, 5)
            assert await store.insert_records([record]) == 1
            totals = await asyncio.gather(*(analytics.totals(Slice(0.0, 3000.0)) for _ in range(20)))
            assert {t.requests for t in totals} == {1}
        finally:
            await analytics.close()
            await store.close()


async def test_asking_a_frozen_server_for_its_connection_room_gives_up(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve --workers N asks PostgreSQL, after migrating, how many connections it has room for:
    a server that stopped answering held the start for the pool's statement timeout twice over
    (asyncpg waits as long for the cancel). Given up as a request's reads are (0.5 s here); the
    supervisor then says it could not check, and starts."""
    from faregate.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "REQUEST_READ_TIMEOUT_S", 0.5)
    database = shared_urls.postgres.rsplit("/", 1)[1]
    link = PartitionableLink(int(shared_urls.postgres.rsplit(":", 1)[1].split("/")[0]))
    port = await link.start()
    store = await PostgresStore.open(f"postgresql://postgres@127.0.0.1:{port}/{database}")
    try:
        link.freeze()
        with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.5 s"):
            await asyncio.wait_for(store.connection_room(), 60)
    finally:
        store._pool.terminate()
        await link.close()
