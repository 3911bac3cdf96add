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

from typing import Any

import asyncpg


class SessionFreeConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection whose release sends nothing (see the module's docstring)."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(url: str, **options: Any) -> Any:
    """asyncpg.create_pool with SessionFreeConnection (the same options otherwise)."""
    return await asyncpg.create_pool(url, connection_class=SessionFreeConnection, **options)
