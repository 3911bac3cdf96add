"""The embedded account backend: balances, holds and the ledger in SQLite; rate limits in process.

One gateway process serves an embedded store (other processes, like the CLI, only make
admin changes), so the rate-limit buckets can live in memory: taking from them is a plain
synchronous step of the event loop, atomic by construction.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from faregate.accounts.backend import (
    Admitted,
    AuditReport,
    Balance,
    HoldRef,
    Refused,
    ReserveAsk,
    balance_audit,
)
from faregate.accounts.instance_lease import InstanceLease
from faregate.accounts.policy import KEEP_HOURS, Limits, hour_of
from faregate.accounts.ratelimit import LocalRateLimiter, RateRefusal, RateState
from faregate.lifecycle import Periodic
from faregate.store.holds import BudgetCheck, HoldRow, InstanceRow
from faregate.store.protocols import LedgerRow
from faregate.store.sqlite.ledger import SQLiteLedger
from faregate.store.sqlite.store import SQLiteStore

# Old spend buckets are dropped at most this often (the scan is over every key's buckets).
PRUNE_INTERVAL_S = 3600.0


class EmbeddedAccounts:
    def __init__(
        self,
        store: SQLiteStore,
        *,
        sweep_interval_s: float = 5.0,
        limiter: LocalRateLimiter | None = None,
        lease_s: float = 15.0,
    ) -> None:
        self.table = store.accounts
        self._store = store
        self.ledger = SQLiteLedger(store)
        self.limiter = limiter or LocalRateLimiter()
        self._sweeper = Periodic("hold-sweeper", sweep_interval_s, self.sweep)
        self._pruned_at = 0.0
        self.lease = InstanceLease(self.ledger.renew_lease, self.ledger.end_lease, lease_s)

    @property
    def instance_id(self) -> str:
        return self.lease.instance_id

    async def start(self) -> None:
        await self.lease.start()
        self._sweeper.start()

    async def close(self) -> None:
        await self._sweeper.stop()
        await self.lease.close()

    async def instances(self) -> list[InstanceRow]:
        return await self.ledger.instances()

    async def release_instance(self, instance_id: str, note: str) -> int:
        return await self.ledger.release_instance(instance_id, note)

    async def reserve(self, ask: ReserveAsk) -> Admitted | Refused:
        # Rate first (in memory, no await), so a burst never queues on the database just to be
        # told 429; the units are given back if the store then refuses.
        taken = self.limiter.take(ask.key_id, ask.limits, ask.tokens)
        if isinstance(taken, RateRefusal):
            return Refused("rate", rate=taken)
        outcome = await self.ledger.reserve(
            ask.key_id,
            ask.hold_id,
            ask.request_id,
            ask.amount_nano,
            ask.tokens,
            ask.hour,
            [BudgetCheck(w.since_hour, w.budget.limit_nano) for w in ask.windows],
            ask.ttl_s,
            ask.instance_id,
        )
        if outcome.status == "ok":
            return Admitted(outcome.balance_nano, taken)
        self.limiter.give_back(ask.key_id, ask.limits, 1, ask.tokens)
        window = ask.windows[outcome.window] if outcome.window is not None else None
        return Refused(
            outcome.status, outcome.balance_nano, outcome.held_nano, window, outcome.window_spent_nano
        )

    async def take_request(self, key_id: str, requests_per_minute: int) -> RateState | RateRefusal:
        return self.limiter.take(key_id, Limits(requests_per_minute, None), 0)

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None:
        await self.ledger.settle(key_id, ref.hold_id, ref.request_id, ref.hour, cost_nano)
        self.limiter.give_back(key_id, ref.limits, 0, ref.tokens - tokens)

    async def release(self, key_id: str, ref: HoldRef) -> None:
        await self.ledger.release(ref.hold_id)
        self.limiter.give_back(key_id, ref.limits, 0, ref.tokens)

    async def sweep(self) -> int:
        released = await self.ledger.sweep()
        now = time.time()
        if now - self._pruned_at > PRUNE_INTERVAL_S:
            # Spend older than the longest budget window is never read again.
            self._pruned_at = now
            await self.ledger.prune_spend(hour_of(now) - KEEP_HOURS)
        return released

    async def credit(self, row: LedgerRow) -> int:
        return await self._store.accounts.credit(row)

    async def balance(self, key_id: str) -> Balance | None:
        account = await self._store.accounts.get_account(key_id)
        if account is None:
            return None
        return Balance(account.balance_nano, await self.ledger.held(key_id))

    async def holds(self, key_id: str) -> list[HoldRow]:
        return await self.ledger.holds(key_id)

    async def spent(self, key_id: str, since_hours: list[int]) -> list[int]:
        return await self.ledger.spent(key_id, since_hours)

    async def key_changed(self, key_id: str, revoked: bool = False) -> None:
        # One serving process: the service already cleared its caches; a revocation made by
        # another process (the CLI) is seen by the next reservation, which reads revoked_at.
        return None

    def on_key_changed(self, listener: Callable[[str], None]) -> None:
        # Nobody else serves this store: there is no other instance to hear from.
        return None

    async def flush(self) -> None:
        return None

    async def audit(self) -> AuditReport:
        report = balance_audit(
            await self._store.accounts.audit_rows(), await self._store.accounts.ledger_keys_without_account()
        )
        report.problems.extend(await self.ledger.dangling())
        return report
