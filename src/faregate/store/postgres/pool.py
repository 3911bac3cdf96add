"""The asyncpg pools of the PostgreSQL store: connections given back without a reset query.

asyncpg resets every connection it takes back (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL`): a round trip and a transaction of its own after every query, which doubled the
transactions of the hot path (measured: an unknown feedback id cost ~6.3 transactions for its 3
reads). The store keeps no session state on a pooled connection: its advisory locks are
transaction-scoped (`pg_advisory_xact_lock`), it never LISTENs, SETs a session variable (session
settings are given once, at connect, as `server_settings`) or holds a cursor past a transaction.
An open transaction is still rolled back on release (asyncpg does that whatever the reset query).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from faregate.store.outage import is_outage

T = TypeVar("T")

# How long a request waits for a read it cannot go on without (its key, its account's policy,
# its account's first load into Redis), and a client or an admin for a statement of a few rows
# (a feedback score; a key list, a key's change, a ledger page).
# PostgreSQL answers them in milliseconds; one that has not answered in this long is down for the
# client (frozen, partitioned), who gets a 503 now rather than after the pool's command_timeout,
# twice over: asyncpg then waits as long again for PostgreSQL to take the cancel.
REQUEST_READ_TIMEOUT_S = 5.0
# How long opening a connection may take (asyncpg's own default is 60 s). PostgreSQL answers a new
# session in milliseconds; one that accepts the connection and says nothing (frozen, a partition
# behind a proxy) held a start that long, then failed with an empty message; and a pool's
# reconnection held a request as long.
CONNECT_TIMEOUT_S = 10.0
# Reads given up, still unwinding (see `answered_within`): kept referenced until they end.
_given_up: set[asyncio.Future[Any]] = set()


def _outage_in_a_line(record: logging.LogRecord) -> bool:
    """asyncpg reopens a pool's closed connections in the background and warns, with a traceback,
    at each attempt that fails: every second at first, through a PostgreSQL outage. An outage's
    warning is made one line, which the gateway's log filter then writes once per interval
    (telemetry/log_limit.py); anything else keeps its traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and is_outage(error):
        record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", None
        record.exc_info = record.exc_text = None
    return True


logging.getLogger("asyncpg.pool").addFilter(_outage_in_a_line)


class SessionFreeConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection whose release sends nothing (see the module's docstring)."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(url: str, *, transaction_pooling: bool = False, **options: Any) -> Any:
    """asyncpg.create_pool with SessionFreeConnection and connections opened within
    CONNECT_TIMEOUT_S (the same options otherwise); `transaction_pooling`: see `pooled_options`."""
    options.setdefault("timeout", CONNECT_TIMEOUT_S)
    return await asyncpg.create_pool(
        url, connection_class=SessionFreeConnection, **pooled_options(transaction_pooling, options)
    )


def pooled_options(transaction_pooling: bool, options: dict[str, Any]) -> dict[str, Any]:
    """asyncpg's options for a server reached through a pooler in transaction mode (PgBouncer's
    pool_mode = transaction; store.postgres_transaction_pooling), else `options` as they are.
    asyncpg keeps each statement prepared, by name, on the server connection it was prepared on;
    the pooler gives the next transaction any server connection, where it 'does not exist'. With
    the cache off every statement is unnamed, prepared and run in one go (and planned with its
    parameters, so the analytics' plan_cache_mode is not needed). No server_settings either: they
    are startup parameters, which PgBouncer refuses ('unsupported startup parameter') unless told
    to ignore them, and a session setting would not follow the transactions anyway."""
    if not transaction_pooling:
        return options
    return {**{k: v for k, v in options.items() if k != "server_settings"}, "statement_cache_size": 0}


def cannot_connect(exc: BaseException) -> str:
    """What a failed connect says: a timeout's own text is empty."""
    if isinstance(exc, TimeoutError):
        return f"cannot connect to PostgreSQL: no answer within {CONNECT_TIMEOUT_S:g} s"
    return f"cannot connect to PostgreSQL: {exc}"


async def answered_within(seconds: float, pool: Any, read: Callable[[Any], Awaitable[T]]) -> T:
    """`read`'s answer on a connection of `pool` (waiting for one counts too), or TimeoutError after
    `seconds` without one. A read given up is cancelled and its connection closed at once, not
    waited for: asyncpg would hold it until PostgreSQL takes the cancel (up to the pool's
    command_timeout, which an asyncio.timeout around the read would wait out too), and a connection
    silent for good (a partition, a failover) never does; a pool's worth of those and every read
    failed until then, however promptly PostgreSQL answered a new connection. PostgreSQL rolls back
    what a closed connection left open."""
    held: list[Any] = []

    async def on_a_connection() -> T:
        async with pool.acquire() as conn:
            held.append(conn)
            return await read(conn)

    task = asyncio.ensure_future(on_a_connection())
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        _give_up(task, held)
        raise
    if not done:
        _give_up(task, held)
        raise TimeoutError(f"PostgreSQL did not answer within {seconds:g} s")
    return task.result()


def _give_up(task: asyncio.Future[Any], held: list[Any]) -> None:
    for conn in held:
        if not conn.is_closed():
            conn.terminate()  # its pool makes a new connection for the next read
    task.cancel()
    _given_up.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _given_up.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: nobody waits for it any more
