"""Which instances are alive, for the verification holds in the store's cap ledger (quality/spend.py).

A hold carries the id of the instance that made it. The gateway ties them to the instance lease its
budget holds already have (accounts/instance_lease.py, renewed every third of
`accounts.instance_lease_s`): once an instance's lease lapses (the process died), its holds no
longer count against the cap and the next admission drops them from the ledger. Only holds older
than a lease are dropped so: an instance that started after the list of live leases was read
has a lease the list does not show, but its holds are younger than that. `SoleInstance` is for a
process that shares its store with no other: only its own holds are alive.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from faregate.accounts.instance_lease import InstanceLease
from faregate.store.holds import new_instance_id

if TYPE_CHECKING:
    from faregate.accounts.backend import AccountBackend


# The lease when the backend does not say (accounts.instance_lease_s's default).
DEFAULT_LEASE_S = 15.0


class Leases(Protocol):
    @property
    def lease_s(self) -> float:
        """How long a lease lasts unrenewed."""
        ...

    @property
    def instance_id(self) -> str:
        """This process's id (its holds carry it)."""
        ...

    async def alive(self) -> set[str]:
        """The instances whose lease is current."""
        ...


class AccountLeases:
    """The leases of the accounts backend (the SQLite file's `instances` table, or Redis)."""

    def __init__(self, backend: AccountBackend) -> None:
        self._backend = backend
        lease = getattr(backend, "lease", None)
        self._lease_s = lease.lease_s if isinstance(lease, InstanceLease) else DEFAULT_LEASE_S

    @property
    def lease_s(self) -> float:
        return self._lease_s

    @property
    def instance_id(self) -> str:
        return self._backend.instance_id

    async def alive(self) -> set[str]:
        now = time.time()
        return {row.instance_id for row in await self._backend.instances() if row.alive(now)}


class SoleInstance:
    """No other instance shares the store: any hold not this process's is a dead process's."""

    def __init__(self) -> None:
        self._id = new_instance_id()

    @property
    def lease_s(self) -> float:
        return DEFAULT_LEASE_S

    @property
    def instance_id(self) -> str:
        return self._id

    async def alive(self) -> set[str]:
        return {self._id}
