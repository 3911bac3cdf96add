"""Move ledger entries from the Redis outbox stream to PostgreSQL, in batches, off the request path.

Every instance runs a shipper; they share one consumer group, so each entry is handed to one
of them. A batch is written in one PostgreSQL transaction, then acknowledged and deleted
from the stream. If a shipper dies between the two, its entries stay pending and another
shipper claims them after `CLAIM_IDLE_MS`; writing them again is harmless, because a ledger
row is unique by entry id and only new rows move a balance. So every entry reaches the
ledger exactly once, as long as Redis keeps its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from faregate.lifecycle import Periodic
from faregate.store.outage import is_outage
from faregate.store.postgres.accounts import PostgresAccountTable
from faregate.store.protocols import LedgerRow
from faregate.store.redis.ledger import OUTBOX

log = logging.getLogger("faregate.ledger")

GROUP = "ledger"
DEAD_LETTERS = "fg:outbox:dead"
# An entry delivered to a shipper and not acknowledged for this long is taken over by another.
CLAIM_IDLE_MS = 15_000
BATCH = 1000
# The longest a round's blocking read waits for new entries, whatever the interval: a read that
# outlasts the client's socket timeout (5 s: accounts/shared.py) fails on an idle outbox, an outage
# said for a Redis that is fine. The round's pause waits out the rest of the interval.
LONGEST_BLOCK_MS = 1000


def entry_row(fields: dict[str, str]) -> LedgerRow:
    return LedgerRow(
        entry_id=fields["e"],
        key_id=fields["k"],
        kind=fields["t"],  # type: ignore[arg-type]
        amount_nano=int(fields["a"]),
        created_at=int(fields["ts"]) / 1000,
        cost_nano=int(fields["c"]) if fields.get("c") else None,
        hold_id=fields.get("h") or None,
        request_id=fields.get("r") or None,
        hour=int(fields["b"]) if fields.get("b") else None,
        note=fields.get("n") or None,
        epoch=fields.get("p") or None,
    )


class LedgerShipper:
    def __init__(self, redis: Redis, pg: PostgresAccountTable, *, interval_s: float = 0.1) -> None:
        self.redis = redis
        self.pg = pg
        self.interval_s = interval_s
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # The wait before the next round: set by each round (0 after a full batch).
        self._pause = interval_s
        self._loop = Periodic("ledger-shipper", lambda: self._pause, self._ship_round, run_first=True)
        self._lock = asyncio.Lock()
        self._last_claim = 0.0
        self.shipped = 0
        # A round met an outage and none has shipped since (the outage is logged once).
        self._outage = False

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(OUTBOX, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def start(self) -> None:
        await self._ensure_group()
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        with contextlib.suppress(RedisError, OSError):
            await self.flush(timeout_s=5.0)
            pending = await self.redis.xpending_range(OUTBOX, GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                await self.redis.xgroup_delconsumer(OUTBOX, GROUP, self.consumer)

    async def _ship_round(self) -> None:
        """One round of the background loop: ship a batch (waiting up to the interval for one),
        and say how long to wait before the next."""
        started = time.monotonic()
        try:
            shipped = await self.ship_once(min(LONGEST_BLOCK_MS, max(1, int(self.interval_s * 1000))))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data: start the group again
                with contextlib.suppress(RedisError):
                    await self._ensure_group()
            else:
                log.exception("ledger shipping failed; retrying")
            self._pause = self.interval_s
            return
        except Exception as exc:
            if not is_outage(exc):
                log.exception("ledger shipping failed; retrying")
            elif not self._outage:
                # PostgreSQL or Redis unreachable: the entries wait in the stream. Said once per
                # outage, in a line: not a traceback a second.
                log.warning(
                    "ledger shipping paused, a store is unreachable (%s: %s); entries wait in Redis",
                    type(exc).__name__,
                    exc,
                )
            self._outage = True
            self._pause = max(self.interval_s, 1.0)
            return
        if self._outage:
            self._outage = False
            log.warning("ledger shipping resumed")
        # A partial batch: wait out the interval so that entries gather into fewer, larger
        # PostgreSQL transactions (each costs the same whatever its size). A full one: go on.
        self._pause = 0.0 if shipped >= BATCH else max(0.0, self.interval_s - (time.monotonic() - started))

    async def ship_once(self, block_ms: int | None = None) -> int:
        """Ship one batch of new entries (waiting up to block_ms for some), and entries other
        shippers left unacknowledged for too long."""
        try:
            return await self._ship_once(block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost its data (a restart without persistence): start the group again. Whoever
            # gets here first (the loop, a flush for the audit) does it.
            await self._ensure_group()
            return 0

    async def _ship_once(self, block_ms: int | None) -> int:
        shipped = 0
        now = time.monotonic()
        if now - self._last_claim > CLAIM_IDLE_MS / 1000 / 3:
            self._last_claim = now
            shipped += await self._claim(CLAIM_IDLE_MS)
        response: Any = await self.redis.xreadgroup(
            GROUP, self.consumer, {OUTBOX: ">"}, count=BATCH, block=block_ms
        )
        for _stream, entries in response or ():
            shipped += await self._ship(entries)
        return shipped

    async def _claim(self, min_idle_ms: int) -> int:
        """Take over entries another shipper was handed but has not acknowledged."""
        claimed: Any = await self.redis.xautoclaim(
            OUTBOX, GROUP, self.consumer, min_idle_ms, "0-0", count=BATCH
        )
        return await self._ship(claimed[1])

    async def _ship(self, entries: list[Any]) -> int:
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries:
            return 0
        async with self._lock:
            rows = [entry_row(fields) for _, fields in entries]
            try:
                await self.pg.apply_ledger(rows)
            except Exception as exc:
                if is_outage(exc):
                    # PostgreSQL is down, not refusing these rows: they wait in the stream.
                    raise
                await self._ship_one_by_one(entries)
                return len(entries)
            await self._done([entry_id for entry_id, _ in entries])
            self.shipped += len(entries)
        return len(entries)

    async def _done(self, ids: list[str]) -> None:
        """Acknowledge and drop shipped entries, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(OUTBOX, GROUP, *ids)
            pipe.xdel(OUTBOX, *ids)
            await pipe.execute()

    async def _ship_one_by_one(self, entries: list[Any]) -> None:
        """A batch PostgreSQL refused as a whole: find the bad entries and set them aside (they are
        kept in a dead-letter stream for an operator) instead of blocking every later one."""
        for entry_id, fields in entries:
            try:
                await self.pg.apply_ledger([entry_row(fields)])
            except Exception as exc:
                if is_outage(exc):
                    raise
                log.exception(
                    "ledger entry %s was refused by PostgreSQL; moved to %s", entry_id, DEAD_LETTERS
                )
                await self.redis.xadd(DEAD_LETTERS, fields)
            await self._done([entry_id])
            self.shipped += 1

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Ship until the outbox is empty (entries other shippers hold included). False on timeout,
        including a call to Redis or PostgreSQL that does not answer in time."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self.ship_once(None)
                    if await self.redis.xlen(OUTBOX) == 0:
                        return True
                    # Entries delivered to another shipper: give it a moment, then take them over.
                    await asyncio.sleep(0.02)
                    await self._claim(1000)
        except TimeoutError:
            return False
