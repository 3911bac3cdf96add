"""Settlements and releases the accounts store could not take when their request ended, tried
again in the background until they land.

A request's cost is known only when it ends; if the store (the SQLite file, Redis) cannot be
reached at that moment, dropping the settlement would let the hold expire uncharged: a store
blip would lose money. So the settlement is kept in memory and retried with a back-off, for up to
`accounts.settle_retry_s`; one that lands after its hold expired is charged as a late settlement.
Retrying is safe: the stores' settle is idempotent per hold (SQLite looks for the hold's ledger
rows; the Redis script remembers a settled hold as long as a retry may come, and PostgreSQL's
ledger is asked before a hold Redis no longer has is charged late, in case Redis lost its data).
A clean stop tries what is still pending once more before the stores close.

Kept settlements are also written to a local spool file (accounts/settle_spool.py), so that one
kept by a process that is killed is not lost: the next process to start replays it, within
`settle_retry_s` of when it was first kept. What a clean stop cannot land stays in the spool too.

An outage is logged once when the first settlement is kept and once when the last one lands, not a
traceback per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faregate.accounts.backend import AccountBackend, HoldRef
from faregate.accounts.money import usd_text
from faregate.accounts.settle_spool import SettlementSpool, SpooledClose
from faregate.lifecycle import Periodic
from faregate.store.outage import is_outage

log = logging.getLogger("faregate.accounts")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
# How often a serving process looks for spool files whose process is gone (a glob and a
# non-blocking lock per file): well within settle_retry_s, so a worker that is not restarted in
# time loses none of its settlements.
ORPHAN_SCAN_S = 30.0


@dataclass(slots=True, frozen=True)
class PendingClose(SpooledClose):
    """A kept settlement (or release) as the spool holds it, and when this process first kept it."""

    # clock() at its first attempt (before it failed: any landing of that attempt came after);
    # kept_unix is time.time() then, what the spool keeps (a clock() means nothing to the next process).
    kept_at: float


class SettlementRetry:
    def __init__(
        self,
        backend: AccountBackend,
        keep_s: float,
        *,
        first_delay_s: float = FIRST_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        orphan_scan_s: float = ORPHAN_SCAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.orphan_scan_s = orphan_scan_s
        self._orphan_scan: Periodic | None = None
        self.keep_s = keep_s
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._pending: deque[PendingClose] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Set while nothing is kept.
        self._empty = asyncio.Event()
        self._empty.set()
        # Kept settlements that landed later, and those given up (past keep_s, or at shutdown).
        self.landed = 0
        self.lost = 0
        # Kept settlements on disk (open_spool; None: in memory only, as in CLI commands and tests).
        self.spool: SettlementSpool | None = None
        # Kept settlements taken over from the spools of processes that stopped before they landed.
        self.replayed = 0
        # landed and lost when the current outage began: its end says what became of its settlements.
        self._landed_before = 0
        self._lost_before = 0

    @property
    def spooled(self) -> int:
        """Kept settlements written to the spool and not landed or given up yet."""
        return self.spool.pending if self.spool is not None else 0

    async def open_spool(self, directory: Path) -> None:
        """Write kept settlements to a spool file in `directory` from now on, and retry those that
        processes which stopped before they landed left in the directory (once each: the spool's
        file locks see to it with several processes): those there now, and those left later, looked
        for every `orphan_scan_s` (a worker of `serve --workers N` the supervisor cannot restart for
        longer than settle_retry_s would otherwise have its settlements given up by nobody)."""
        self.spool = await SettlementSpool.open(directory)
        await self._take_over_orphans()
        self._orphan_scan = Periodic(
            "settlement spool orphan scan", self.orphan_scan_s, self._take_over_orphans
        )
        self._orphan_scan.start()

    async def _take_over_orphans(self) -> None:
        if self.spool is None or self._closed:
            return
        claimed = await self.spool.claim_orphans()
        if not claimed:
            return
        if not self._pending:
            self._outage_begins()
        now, now_unix = self._clock(), time.time()
        for entry in claimed:
            # The time the gateway was down counts: a replay keeps to settle_retry_s from when the
            # settlement was first kept, as long as Redis remembers the settled holds
            # (accounts/settle_spool.py says why that bound makes the replay safe).
            waited = max(0.0, now_unix - entry.kept_unix)
            self._pending.append(
                PendingClose(
                    entry.key_id, entry.ref, entry.cost_nano, entry.tokens, entry.kept_unix, now - waited
                )
            )
        self.replayed += len(claimed)
        self._empty.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="settlement-retry")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_empty(self) -> None:
        """Until nothing is kept (landed or given up)."""
        await self._empty.wait()

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None:
        await self._close_or_keep(PendingClose(key_id, ref, cost_nano, tokens, time.time(), self._clock()))

    async def release(self, key_id: str, ref: HoldRef) -> None:
        await self._close_or_keep(PendingClose(key_id, ref, None, 0, time.time(), self._clock()))

    async def release_later(self, key_id: str, ref: HoldRef, exc: BaseException) -> None:
        """Keep a release without trying it first: the store has just failed to answer (`exc`)."""
        item = PendingClose(key_id, ref, None, 0, time.time(), self._clock())
        await self._write_to_spool(item)
        self._keep(item, exc)

    async def _close_or_keep(self, item: PendingClose) -> None:
        try:
            await self._apply(item)
        except Exception as exc:
            if not is_outage(exc) or self._closed:
                raise
            await self._write_to_spool(item)
            self._keep(item, exc)

    async def _write_to_spool(self, item: PendingClose) -> None:
        if self.spool is None:
            return
        try:
            await self.spool.keep(item)
        except OSError as exc:
            # A full or failing disk: still kept in memory, as without a spool; only a kill loses it.
            log.error(
                "could not write the kept settlement %s/%s to the spool %s (%s: %s): it is kept in "
                "memory only",
                item.key_id,
                item.ref.hold_id,
                self.spool.path,
                type(exc).__name__,
                exc,
            )

    async def _apply(self, item: PendingClose) -> None:
        if item.cost_nano is None:
            await self.backend.release(item.key_id, item.ref)
        else:
            await self.backend.settle(item.key_id, item.ref, item.cost_nano, item.tokens)

    def _outcome(self) -> str:
        """What became of the settlements kept since the outage began, once none is left: landed,
        or given up (each logged with its amount when it was)."""
        landed, given_up = self.landed - self._landed_before, self.lost - self._lost_before
        if not given_up:
            return "accounts store reachable again: every kept settlement has landed"
        if not landed:
            return (
                f"no kept settlement left: all {given_up} were given up (each logged above); "
                "none has landed, the accounts store may still be unreachable"
            )
        return (
            f"accounts store reachable again: {landed} kept settlement(s) landed, {given_up} given up "
            "(each logged above)"
        )

    def _outage_begins(self) -> None:
        self._landed_before, self._lost_before = self.landed, self.lost

    def _keep(self, item: PendingClose, exc: BaseException) -> None:
        if not self._pending:
            self._outage_begins()
            log.warning(
                "accounts store unreachable (%s: %s): settlements are kept in memory%s and retried for "
                "up to %.0fs",
                type(exc).__name__,
                exc,
                "" if self.spool is None else f" and in the spool {self.spool.path}",
                self.keep_s,
            )
        self._pending.append(item)
        self._empty.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="settlement-retry")

    async def _retry(self) -> None:
        delay = self.first_delay_s
        while self._pending:
            await asyncio.sleep(delay)
            if await self._land_all():
                log.warning("%s", self._outcome())
                return
            delay = min(delay * 2, self.max_delay_s)

    async def _land_all(self) -> bool:
        """Land the kept settlements in order; False at the first that still meets an outage."""
        done: list[str] = []
        try:
            while self._pending:
                item = self._pending[0]
                if self._clock() - item.kept_at > self.keep_s:
                    self._pending.popleft()
                    done.append(item.ref.hold_id)
                    self._give_up([item], f"not landed within {self.keep_s:.0f}s of being kept")
                    continue
                try:
                    await self._apply(item)
                except Exception as exc:
                    if is_outage(exc):
                        return False
                    # Not an outage (a bug): trying again would fail the same way.
                    self._pending.popleft()
                    done.append(item.ref.hold_id)
                    self.lost += 1
                    log.exception("could not settle the reservation %s", item.ref.hold_id)
                    continue
                self._pending.popleft()
                done.append(item.ref.hold_id)
                self.landed += 1
        finally:
            await self._spool_done(done)
        # Only now: whoever waits for it finds the spool up to date too.
        self._empty.set()
        return True

    async def _spool_done(self, hold_ids: list[str]) -> None:
        if self.spool is None or not hold_ids:
            return
        try:
            await self.spool.done(hold_ids)
        except OSError as exc:
            # Left marked open on disk: a replay of them by the next process is idempotent.
            log.error(
                "could not update the settlement spool %s (%s: %s)", self.spool.path, type(exc).__name__, exc
            )

    def _give_up(self, items: list[PendingClose], why: str) -> None:
        charged = [i for i in items if i.cost_nano]
        self.lost += len(items)
        log.error(
            "gave up %d kept settlement(s) (%s); %d of them charge $%s in all, which their holds' "
            "expiry releases uncharged: %s",
            len(items),
            why,
            len(charged),
            usd_text(sum(i.cost_nano or 0 for i in charged)),
            ", ".join(f"{i.key_id}/{i.ref.hold_id}" for i in charged[:20]),
        )

    async def close(self) -> None:
        """A clean stop: the retry loop ends and what is still kept is tried once more."""
        self._closed = True
        if self._orphan_scan is not None:
            # A takeover in progress finishes: what it copied into this process's file is then kept too.
            await self._orphan_scan.stop(grace_s=5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            if self._pending and await self._land_all():
                log.warning("%s", self._outcome())
        finally:
            # Also when the stop's time for this ran out: what is left is said, not dropped silently.
            if self._pending:
                left = list(self._pending)
                self._pending.clear()
                if self.spool is None:
                    self._give_up(left, "the gateway stopped while the accounts store was unreachable")
                else:
                    log.warning(
                        "the gateway stops with %d kept settlement(s) the accounts store has not taken "
                        "yet: they stay in the spool %s, and the next gateway process to start on it "
                        "retries them",
                        len(left),
                        self.spool.path,
                    )
                self._empty.set()
            if self.spool is not None:
                await self.spool.close()
