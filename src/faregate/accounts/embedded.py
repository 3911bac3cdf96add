"""The embedded account backend: balances, holds and the ledger in SQLite; rate limits in
process, or in the SQLite file when several worker processes serve the store.

With one serving process (other processes, like the CLI, only make admin changes) the
rate-limit buckets live in memory: taking from them is a plain synchronous step of the event
loop, atomic by construction. With `serve --workers N` (`shared`) they live in the file
(store/sqlite/rate_buckets.py) and are taken inside the reservation's own write transaction,
given back inside the settlement's: exact across the processes, at no extra transaction.

A key changed or revoked through any process (a worker's admin API, the CLI) is written to
`key_events`; with several workers each one reads the new events every KEY_EVENTS_POLL_S and
drops what it caches of those keys (verified keys, policies), as Redis's key events do for
several instances. Events older than KEY_EVENTS_KEEP_S are deleted by the sweeper.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Literal

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
from faregate.accounts.money import MAX_NANO
from faregate.accounts.policy import KEEP_HOURS, Limits, hour_of
from faregate.accounts.ratelimit import (
    LocalRateLimiter,
    RateRefusal,
    RateState,
    count_request_in,
    give_back_to,
    take_from,
)
from faregate.lifecycle import Periodic
from faregate.store.holds import BudgetCheck, HoldRow, InstanceRow, ReserveOutcome
from faregate.store.protocols import LedgerRow
from faregate.store.sqlite import rate_buckets
from faregate.store.sqlite.ledger import SQLiteLedger
from faregate.store.sqlite.store import SQLiteStore

# Old spend buckets are dropped at most this often (the scan is over every key's buckets).
PRUNE_INTERVAL_S = 3600.0
KEY_EVENTS_POLL_S = 0.25
KEY_EVENTS_KEEP_S = 300.0


def _last_key_event(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM key_events").fetchone()[0])


def _key_refusal(conn: sqlite3.Connection, key_id: str) -> Literal["revoked", "no_account"] | None:
    """Why the store refuses this key whatever it asks (401: revoked, no account), or None."""
    found = conn.execute(
        "SELECT k.revoked_at FROM accounts a JOIN api_keys k ON k.id = a.key_id WHERE a.key_id = ?",
        (key_id,),
    ).fetchone()
    if found is None:
        return "no_account"
    return "revoked" if found[0] is not None else None


def _limited(limits: Limits) -> bool:
    return limits.requests_per_minute is not None or limits.tokens_per_minute is not None


class EmbeddedAccounts:
    def __init__(
        self,
        store: SQLiteStore,
        *,
        sweep_interval_s: float = 5.0,
        limiter: LocalRateLimiter | None = None,
        lease_s: float = 15.0,
        shared: bool = False,
    ) -> None:
        self.table = store.accounts
        self._store = store
        self.ledger = SQLiteLedger(store)
        self.limiter = limiter or LocalRateLimiter()
        # Several worker processes serve this store (`serve --workers N`).
        self.shared = shared
        self._key_listeners: list[Callable[[str], None]] = []
        self._key_events_seen = 0
        self._key_events = Periodic("key-events", KEY_EVENTS_POLL_S, self.read_key_events)
        self._sweeper = Periodic("hold-sweeper", sweep_interval_s, self.sweep)
        self._pruned_at = 0.0
        self.lease = InstanceLease(self.ledger.renew_lease, self.ledger.end_lease, lease_s)

    @property
    def instance_id(self) -> str:
        return self.lease.instance_id

    async def start(self) -> None:
        await self.lease.start()
        self._sweeper.start()
        if self.shared:
            self._key_events_seen = await self._store.run_read(_last_key_event)
            self._key_events.start()

    async def close(self) -> None:
        await self._key_events.stop()
        await self._sweeper.stop()
        await self.lease.close()

    async def read_key_events(self) -> None:
        """Tell the listeners of the keys changed by any process since the last read."""
        seen = self._key_events_seen
        rows: list[tuple[int, str]] = await self._store.run_read(
            lambda conn: conn.execute(
                "SELECT seq, key_id FROM key_events WHERE seq > ? ORDER BY seq", (seen,)
            ).fetchall()
        )
        for seq, key_id in rows:
            self._key_events_seen = max(self._key_events_seen, int(seq))
            for listener in self._key_listeners:
                listener(key_id)

    async def instances(self) -> list[InstanceRow]:
        return await self.ledger.instances()

    async def release_instance(self, instance_id: str, note: str) -> int:
        return await self.ledger.release_instance(instance_id, note)

    async def reserve(self, ask: ReserveAsk) -> Admitted | Refused:
        if self.shared:
            return await self._reserve_shared(ask)
        # Rate first (in memory, no await), so a burst never queues on a write transaction just
        # to be told 429; the units are given back if the store then refuses.
        taken = self.limiter.take(ask.key_id, ask.limits, ask.tokens)
        if isinstance(taken, RateRefusal):
            # But a key revoked by another process (the CLI) while this one caches it is told 401,
            # as the reservation would tell it, and as Redis does (revocation before rate limits),
            # not 429 (come back later): one read, for refused requests only.
            refusal = await self._store.run_read(lambda conn: _key_refusal(conn, ask.key_id))
            return Refused(refusal) if refusal is not None else Refused("rate", rate=taken)
        try:
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
        except Exception:
            # The store failed (an outage: 503): nothing was admitted, so nothing is taken.
            self.limiter.give_back(ask.key_id, ask.limits, 1, ask.tokens)
            raise
        if outcome.status != "ok":
            self.limiter.give_back(ask.key_id, ask.limits, 1, ask.tokens)
        return self._outcome(ask, outcome, taken)

    @staticmethod
    def _outcome(ask: ReserveAsk, outcome: ReserveOutcome, taken: RateState) -> Admitted | Refused:
        if outcome.status == "ok":
            return Admitted(outcome.balance_nano, taken)
        window = ask.windows[outcome.window] if outcome.window is not None else None
        return Refused(
            outcome.status, outcome.balance_nano, outcome.held_nano, window, outcome.window_spent_nano
        )

    async def _reserve_shared(self, ask: ReserveAsk) -> Admitted | Refused:
        reserving = self.ledger.reserving(
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
        now = time.time()

        def work(conn: sqlite3.Connection) -> tuple[RateState | RateRefusal, ReserveOutcome | None]:
            # Revocation before the rate limits, as on Redis: a revoked key is told 401, not 429.
            refusal = _key_refusal(conn, ask.key_id)
            if refusal is not None:
                return RateState(None, None), ReserveOutcome(refusal)
            if not _limited(ask.limits):
                return RateState(None, None), reserving(conn)
            requests, tokens = rate_buckets.load(conn, ask.key_id, now)
            taken = take_from(requests, tokens, ask.limits, ask.tokens, now)
            if isinstance(taken, RateRefusal):
                return taken, None
            outcome = reserving(conn)
            if outcome.status == "ok":
                rate_buckets.save(conn, ask.key_id, requests, tokens)
            return taken, outcome

        taken, outcome = await self.ledger.run(work)
        if isinstance(taken, RateRefusal):
            return Refused("rate", rate=taken)
        assert outcome is not None
        return self._outcome(ask, outcome, taken)

    async def take_request(
        self, key_id: str, requests_per_minute: int | None, tokens_per_minute: int | None = None
    ) -> RateState | RateRefusal | Refused:
        limits = Limits(requests_per_minute, tokens_per_minute)
        if not self.shared or not _limited(limits):
            # A key revoked by another process (the CLI) while this one caches it is refused on a
            # hit as on a miss (the reservation reads revoked_at): one read, no write transaction.
            refusal = await self._store.run_read(lambda conn: _key_refusal(conn, key_id))
            if refusal is not None:
                return Refused(refusal)
            if not _limited(limits):
                return RateState(None, None)
            return self.limiter.count_request(key_id, limits)
        now = time.time()

        def work(conn: sqlite3.Connection) -> RateState | RateRefusal | Refused:
            refusal = _key_refusal(conn, key_id)
            if refusal is not None:
                return Refused(refusal)
            requests, tokens = rate_buckets.load(conn, key_id, now)
            taken = count_request_in(requests, tokens, limits, now)
            if not isinstance(taken, RateRefusal):
                rate_buckets.save(conn, key_id, requests, tokens)
            return taken

        return await self.ledger.run(work)

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None:
        settling = self.ledger.settling(key_id, ref.hold_id, ref.request_id, ref.hour, cost_nano)
        if not self.shared:
            await self.ledger.run(settling)
            self.limiter.give_back(key_id, ref.limits, 0, ref.tokens - tokens)
            return
        await self.ledger.run(self._giving_back(settling, key_id, ref.limits, ref.tokens - tokens))

    async def release(self, key_id: str, ref: HoldRef) -> None:
        releasing = self.ledger.releasing(ref.hold_id)
        if not self.shared:
            await self.ledger.run(releasing)
            self.limiter.give_back(key_id, ref.limits, 0, ref.tokens)
            return
        await self.ledger.run(self._giving_back(releasing, key_id, ref.limits, ref.tokens))

    @staticmethod
    def _giving_back(
        work: Callable[[sqlite3.Connection], bool], key_id: str, limits: Limits, tokens: int
    ) -> Callable[[sqlite3.Connection], bool]:
        """`work`, then the unused tokens back to the key's bucket, in the same transaction."""

        def both(conn: sqlite3.Connection) -> bool:
            done = work(conn)
            if limits.tokens_per_minute is not None and tokens:
                now = time.time()
                requests, bucket = rate_buckets.load(conn, key_id, now)
                give_back_to(requests, bucket, limits, 0, tokens, now)
                rate_buckets.save(conn, key_id, requests, bucket)
            return done

        return both

    async def sweep(self) -> int:
        released = await self.ledger.sweep()
        now = time.time()
        await self.ledger.run(
            lambda conn: conn.execute("DELETE FROM key_events WHERE at < ?", (now - KEY_EVENTS_KEEP_S,))
        )
        if now - self._pruned_at > PRUNE_INTERVAL_S:
            # Spend older than the longest budget window is never read again.
            self._pruned_at = now
            await self.ledger.prune_spend(hour_of(now) - KEEP_HOURS)
        return released

    async def credit(self, row: LedgerRow) -> int:
        return await self._store.accounts.credit(row, MAX_NANO)

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
        # This process's caches are already cleared (the service did it). Other worker processes
        # read the event; a lone serving process applies a change made elsewhere (the CLI)
        # within the key cache's TTL, and a revocation at the next reservation (it reads
        # revoked_at).
        now = time.time()
        await self.ledger.run(
            lambda conn: conn.execute("INSERT INTO key_events (key_id, at) VALUES (?, ?)", (key_id, now))
        )

    def on_key_changed(self, listener: Callable[[str], None]) -> None:
        self._key_listeners.append(listener)

    async def flush(self) -> None:
        return None

    async def audit(self) -> AuditReport:
        report = balance_audit(
            await self._store.accounts.audit_rows(), await self._store.accounts.ledger_keys_without_account()
        )
        report.problems.extend(await self.ledger.dangling())
        return report
