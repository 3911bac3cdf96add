"""PostgreSQL's "not now" errors as StoreUnavailable, for every module that talks to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from faregate.store.protocols import StoreUnavailable

# Errors that mean "not now" (connection lost, server shutting down, too many clients, a server
# that takes no writes, e.g. a standby reached mid-failover): retryable.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


@contextmanager
def unavailable_errors() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"PostgreSQL: {exc}") from exc
