"""Open every backend a process needs, chosen once from the settings, and close them all.

The one place that decides how Faregate keeps its state:
- embedded (no store.postgres_url): one SQLite file under store.path holds keys, accounts,
  holds, request records, feedback and the dashboard's rollups; rate limits live in process
  (in the file when `server.workers` > 1: several processes serve it);
- shared (store.postgres_url and store.redis_url, which go together): PostgreSQL holds the
  durable state, Redis the reservations, rate limits and key events, so any number of gateway
  instances act as one.
Everything else is handed what was opened here and never asks which it was (`shared` says it
for the few who must know, e.g. a record may be written by another instance).

A process asks for the parts it uses (`accounts`, `analytics`); the store is always opened, and
migrated. `open_records_reader` is the read-only exception: for commands that only read records,
it never migrates or writes, so it can run beside a live gateway. Both ask `_shared`.

Invariants: what is opened is closed, newest first, by `Backends.close()` (also when opening
fails half-way), each close bounded in time; the embedded store never imports asyncpg or redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from faregate.config import Settings
from faregate.lifecycle import Lifecycle
from faregate.store.alert_memory import AlertMemory
from faregate.store.analytics import Analytics, FeedbackStore, Rollup
from faregate.store.protocols import Store, StoreUnavailable

if TYPE_CHECKING:
    from faregate.accounts.backend import AccountBackend


@dataclass(slots=True, frozen=True)
class AnalyticsStores:
    """The dashboard's side of a store, on connections of its own: reads for the dashboard and
    the alerts, feedback scores, and the hourly rollups' writer."""

    analytics: Analytics
    feedback: FeedbackStore
    rollup: Rollup
    # The alerts that fired, for the process that posts them (telemetry/alerts.py).
    alert_memory: AlertMemory


class Backends:
    """What `open_backends` opened. `accounts` and `analytics` raise if they were not asked for."""

    def __init__(self, store: Store, exits: Lifecycle, redis_url: str | None = None) -> None:
        self.store = store
        # The shared Redis (None: embedded). Other parts that share state between instances (the
        # response cache) use it too.
        self.redis_url = redis_url
        self._exits = exits
        self._accounts: AccountBackend | None = None
        self._analytics: AnalyticsStores | None = None

    @property
    def shared(self) -> bool:
        """True: PostgreSQL and Redis, shared with other instances; False: the embedded SQLite file."""
        return self.redis_url is not None

    @property
    def accounts(self) -> AccountBackend:
        """Balances, holds and rate limits (not started: a serving process calls start())."""
        if self._accounts is None:
            raise RuntimeError("open_backends(accounts=False): the accounts were not opened")
        return self._accounts

    @property
    def analytics(self) -> AnalyticsStores:
        if self._analytics is None:
            raise RuntimeError("open_backends(analytics=False): the analytics were not opened")
        return self._analytics

    async def close(self) -> None:
        await self._exits.aclose()


async def open_backends(settings: Settings, *, accounts: bool = True, analytics: bool = True) -> Backends:
    """The store the settings name, migrated and ready, and the parts asked for beside it."""
    exits = Lifecycle()
    try:
        if _shared(settings):
            backends = await _open_shared(settings, _postgres_url(settings), exits, accounts, analytics)
        else:
            backends = await _open_embedded(settings, exits, accounts, analytics)
    except BaseException:
        await exits.aclose()
        raise
    return backends


def _shared(settings: Settings) -> bool:
    """The choice: PostgreSQL and Redis when the config names them, else the embedded file."""
    return settings.store.postgres_url is not None


def _postgres_url(settings: Settings) -> str:
    url = settings.store.postgres_url
    if url is None:
        raise StoreUnavailable("store.postgres_url is not set")
    return url


async def _open_embedded(settings: Settings, exits: Lifecycle, accounts: bool, analytics: bool) -> Backends:
    from faregate.store.sqlite.store import SQLiteStore

    store = await SQLiteStore.open(settings.store.path, processes_lock=(settings.server.workers or 1) > 1)
    exits.on_close("the SQLite store", store.close)
    backends = Backends(store, exits)
    if accounts:
        from faregate.accounts.embedded import EmbeddedAccounts

        embedded = EmbeddedAccounts(
            store,
            sweep_interval_s=settings.accounts.sweep_interval_s,
            lease_s=settings.accounts.instance_lease_s,
            # Several worker processes on this file: one rate limit, and they hear of key changes.
            shared=(settings.server.workers or 1) > 1,
        )
        exits.on_close("the embedded accounts", embedded.close)
        backends._accounts = embedded
    if analytics:
        backends._analytics = await _sqlite_analytics(store.path, exits)
    return backends


async def _sqlite_analytics(db_path: Path, exits: Lifecycle) -> AnalyticsStores:
    from faregate.store.sqlite.alert_memory import SQLiteAlertMemory
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.feedback import SQLiteFeedbackTable
    from faregate.store.sqlite.rollup import RollupWriter

    reads = await SQLiteAnalytics.open(db_path)
    exits.on_close("the analytics connection", reads.close)
    # The rollup writes in transactions of its own: its own connection keeps them apart from the
    # feedback writes and dashboard reads on the analytics connection.
    rollup = await RollupWriter.open(db_path)
    exits.on_close("the rollup connection", rollup.close)
    conn = reads.connection
    return AnalyticsStores(reads, SQLiteFeedbackTable(conn), rollup, SQLiteAlertMemory(conn))


async def _open_shared(
    settings: Settings, url: str, exits: Lifecycle, accounts: bool, analytics: bool
) -> Backends:
    # Imported here: the embedded store never loads asyncpg or redis.
    from faregate.store.postgres.store import PostgresStore

    pooling = settings.store.postgres_transaction_pooling
    store = await PostgresStore.open(
        url, pool_size=settings.store.postgres_pool_size, transaction_pooling=pooling
    )
    exits.on_close("the PostgreSQL store", store.close)
    redis_url = settings.store.redis_url
    if redis_url is None:  # faregate.config refuses one without the other
        raise StoreUnavailable("store.postgres_url needs store.redis_url")
    backends = Backends(store, exits, redis_url)
    if accounts:
        from faregate.accounts.shared import SharedAccounts

        shared = await SharedAccounts.connect(
            redis_url,
            store,
            flush_interval_s=settings.accounts.ledger_flush_interval_s,
            sweep_interval_s=settings.accounts.sweep_interval_s,
            pool_size=settings.store.redis_pool_size,
            lease_s=settings.accounts.instance_lease_s,
            # A settlement retried after an outage (accounts/settle_retry.py) is never charged twice.
            remember_settled_s=settings.accounts.settle_retry_s + 60.0,
        )
        # SharedAccounts.close bounds itself (a frozen Redis); this bound only backs it up.
        exits.on_close("the shared accounts", shared.close, timeout_s=30.0)
        backends._accounts = shared
    if analytics:
        from faregate.store.postgres.alert_memory import PostgresAlertMemory
        from faregate.store.postgres.analytics import PostgresAnalytics
        from faregate.store.postgres.feedback import PostgresFeedbackTable
        from faregate.store.postgres.rollup import PostgresRollupWriter

        reads = await PostgresAnalytics.open(url, transaction_pooling=pooling)
        exits.on_close("the analytics pool", reads.close)
        backends._analytics = AnalyticsStores(
            reads,
            PostgresFeedbackTable(reads.pool),
            PostgresRollupWriter(reads.pool),
            PostgresAlertMemory(reads.pool),
        )
    return backends


async def open_records_reader(settings: Settings) -> Analytics:
    """The analytics over the store the settings name, read-only: no migration, no write, no
    Redis (for commands that only read records, beside a live gateway). StoreUnavailable when
    there is nothing to read yet. The caller closes it."""
    if _shared(settings):
        from faregate.store.postgres.analytics import PostgresAnalytics

        return await PostgresAnalytics.open(
            _postgres_url(settings),
            pool_size=1,
            read_only=True,
            transaction_pooling=settings.store.postgres_transaction_pooling,
        )
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.store import DB_FILENAME

    return await SQLiteAnalytics.open(Path(settings.store.path) / DB_FILENAME, read_only=True)
