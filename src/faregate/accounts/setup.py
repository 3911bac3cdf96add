"""Build the accounts side of a gateway (or a CLI command) from the settings and the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faregate.accounts.admission import Admission, OpenAdmission
from faregate.accounts.backend import AccountBackend
from faregate.accounts.keys import KeyStore
from faregate.accounts.metered import MeteredAdmission, PolicyCache
from faregate.accounts.money import parse_usd
from faregate.accounts.service import AccountsService
from faregate.config import Settings
from faregate.store.protocols import Store

# Margin between the request deadline and a hold's expiry: a live request always settles first.
HOLD_TTL_MARGIN_S = 60.0


@dataclass(slots=True)
class Accounts:
    backend: AccountBackend
    policies: PolicyCache
    admission: Admission
    service: AccountsService

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()


def new_key_credits_nano(settings: Settings) -> int:
    credits = settings.accounts.new_key_credits_usd
    return parse_usd(credits, "accounts.new_key_credits_usd", allow_zero=True)


def hold_ttl_s(settings: Settings) -> float:
    if settings.accounts.hold_ttl_s is not None:
        return settings.accounts.hold_ttl_s
    return settings.server.request_timeout_s + HOLD_TTL_MARGIN_S


async def open_accounts(settings: Settings, store: Store, keys: KeyStore) -> Accounts:
    """The backend the store settings name: SQLite (embedded) or Redis + PostgreSQL (shared)."""
    policies = PolicyCache(store.accounts, ttl_s=settings.auth.key_cache_ttl_s)
    backend: AccountBackend
    if settings.store.redis_url is not None:
        from faregate.accounts.shared import SharedAccounts
        from faregate.store.postgres.store import PostgresStore

        if not isinstance(store, PostgresStore):
            raise TypeError("shared accounts need the PostgreSQL store")

        def forget(key_id: str) -> None:
            # Another instance changed or revoked this key: drop what this one remembers.
            keys.clear_cache()
            policies.forget(key_id or None)

        listeners: list[Callable[[str], None]] = [forget]
        backend = await SharedAccounts.connect(
            settings.store.redis_url,
            store,
            listeners=listeners,
            flush_interval_s=settings.accounts.ledger_flush_interval_s,
            sweep_interval_s=settings.accounts.sweep_interval_s,
            pool_size=settings.store.redis_pool_size,
            lease_s=settings.accounts.instance_lease_s,
        )
    else:
        from faregate.accounts.embedded import EmbeddedAccounts
        from faregate.store.sqlite.store import SQLiteStore

        if not isinstance(store, SQLiteStore):
            raise TypeError("embedded accounts need the SQLite store")
        backend = EmbeddedAccounts(
            store,
            sweep_interval_s=settings.accounts.sweep_interval_s,
            lease_s=settings.accounts.instance_lease_s,
        )
    admission: Admission = OpenAdmission()
    if settings.accounts.enabled:
        admission = MeteredAdmission(backend, policies, settings.accounts, hold_ttl_s(settings))
    service = AccountsService(keys, backend, policies, settings.accounts)
    return Accounts(backend, policies, admission, service)
