"""Where the gateway keeps its state: one folder per backend, the shared parts at the top.

    protocols.py      what the rest of the gateway may ask of a store (keys, records, accounts)
    holds.py rows.py  reservation values; a request record as a flat SQL row (money exact)
    schema.py         a versioned migration step
    analytics.py      what the dashboard, feedback and alerts ask (Analytics, FeedbackStore)
    analytics_rows.py analytics_sql.py record_sums.py   their rows and dialect-neutral SQL
    outage.py         "a store is down right now" (503) told apart from a bug
    sqlite/           the embedded store: everything in one SQLite file
    postgres/         the shared durable store: keys, the ledger, records, the dashboard
    redis/            the shared live store: reservations, rate limits, the ledger's outbox

The embedded store never imports asyncpg or redis: postgres/ and redis/ load only when the
config names them.
"""

from faregate.config import StoreSettings
from faregate.store.protocols import (
    GROUP_BY,
    DuplicateError,
    GroupBy,
    KeyRow,
    KeyTable,
    RecordTable,
    Store,
    StoreUnavailable,
    UsageRow,
)
from faregate.store.sqlite.store import SQLiteStore


async def open_store(settings: StoreSettings) -> Store:
    """The store the settings name, migrated and ready: PostgreSQL when store.postgres_url is
    set (several instances), else SQLite under store.path."""
    if settings.postgres_url is not None:
        from faregate.store.postgres.store import PostgresStore

        return await PostgresStore.open(settings.postgres_url, pool_size=settings.postgres_pool_size)
    return await SQLiteStore.open(settings.path)


__all__ = [
    "GROUP_BY",
    "DuplicateError",
    "GroupBy",
    "KeyRow",
    "KeyTable",
    "RecordTable",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "UsageRow",
    "open_store",
]
