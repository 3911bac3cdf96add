"""Tell "a store cannot be reached right now" from a bug, whichever store raised it.

An outage of PostgreSQL, Redis or the SQLite file is not the client's fault and not ours: the
edge answers it with 503 `store_unavailable` (OpenAI's error shape, Retry-After) and one log
line, instead of a 500 and a traceback per request. Everything else stays a 500 with its
traceback. Drivers are looked up in sys.modules, never imported here: the embedded store
never loads asyncpg or redis.
"""

from __future__ import annotations

import sys

from faregate.errors import ServiceUnavailable
from faregate.store.protocols import StoreUnavailable


def _driver_outages() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    asyncpg = sys.modules.get("asyncpg.exceptions")
    if asyncpg is not None:
        found += [
            asyncpg.PostgresConnectionError,  # class 08: the connection is gone or refused
            asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
            asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
            asyncpg.InterfaceError,  # the pool or the connection is closed
            asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby (mid-failover) or a read-only server
        ]
    redis = sys.modules.get("redis.exceptions")
    if redis is not None:
        found += [redis.ConnectionError, redis.TimeoutError]
    return tuple(found)


def is_outage(exc: BaseException) -> bool:
    """Does this exception (or the one it was raised from) say a store is unreachable now?"""
    kinds: tuple[type[BaseException], ...] = (StoreUnavailable, OSError, TimeoutError)
    kinds += _driver_outages()
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 4:
        if isinstance(current, kinds):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def outage_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 a client gets for a store outage, or None if `exc` is something else."""
    if not is_outage(exc):
        return None
    return ServiceUnavailable(
        f"The gateway cannot reach one of its stores right now ({type(exc).__name__}). Retry shortly.",
        headers={"Retry-After": "1"},
    )
