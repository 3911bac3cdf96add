"""The embedded store (SQLite) behind a small interface; shared stores plug in behind the same one."""

from faregate.config import StoreSettings
from faregate.store.base import (
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
from faregate.store.sqlite import SQLiteStore


async def open_store(settings: StoreSettings) -> Store:
    """The store the settings name, migrated and ready: PostgreSQL when store.postgres_url is
    set (several instances), else SQLite under store.path."""
    if settings.postgres_url is not None:
        from faregate.store.postgres import PostgresStore

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
