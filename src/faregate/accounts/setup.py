"""Build the accounts side of a gateway (or a CLI command) over the account backend the store
opened (store/backends.py chose it: SQLite, or Redis and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faregate.accounts.admission import Admission, OpenAdmission
from faregate.accounts.backend import AccountBackend
from faregate.accounts.keys import KeyStore
from faregate.accounts.metered import MeteredAdmission, PolicyCache
from faregate.accounts.money import parse_usd
from faregate.accounts.service import AccountsService
from faregate.accounts.settle_retry import SettlementRetry
from faregate.config import Settings

# Margin between the request deadline and a hold's expiry: a live request always settles first.
HOLD_TTL_MARGIN_S = 60.0


@dataclass(slots=True)
class Accounts:
    backend: AccountBackend
    policies: PolicyCache
    admission: Admission
    service: AccountsService

    @property
    def settlements(self) -> SettlementRetry | None:
        """Settlements kept through a store outage (None: metering is off)."""
        return self.admission.settlements if isinstance(self.admission, MeteredAdmission) else None


def new_key_credits_nano(settings: Settings) -> int:
    credits = settings.accounts.new_key_credits_usd
    return parse_usd(credits, "accounts.new_key_credits_usd", allow_zero=True)


def hold_ttl_s(settings: Settings) -> float:
    if settings.accounts.hold_ttl_s is not None:
        return settings.accounts.hold_ttl_s
    return settings.server.request_timeout_s + HOLD_TTL_MARGIN_S


def settle_spool_directory(settings: Settings) -> Path:
    """Where kept settlements are spooled (accounts/settle_spool.py)."""
    if settings.accounts.settle_spool_path is not None:
        return Path(settings.accounts.settle_spool_path)
    return Path(settings.store.path) / "settle-spool"


def build_accounts(settings: Settings, backend: AccountBackend, keys: KeyStore) -> Accounts:
    """Policies, the admission gate and the admin service over `backend` (which the store's
    backends own: they close it)."""
    policies = PolicyCache(backend.table, ttl_s=settings.auth.key_cache_ttl_s)

    def forget(key_id: str) -> None:
        # Another instance changed or revoked this key: drop what this one remembers.
        keys.clear_cache()
        policies.forget(key_id or None)

    backend.on_key_changed(forget)
    admission: Admission = OpenAdmission()
    if settings.accounts.enabled:
        admission = MeteredAdmission(backend, policies, settings.accounts, hold_ttl_s(settings))
    service = AccountsService(keys, backend, policies, settings.accounts)
    return Accounts(backend, policies, admission, service)
