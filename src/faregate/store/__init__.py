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
    """The store the settings name (today: SQLite under settings.path), migrated and ready."""
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
