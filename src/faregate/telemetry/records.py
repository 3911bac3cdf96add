"""Request records: buffered in memory, written to the store in batches, off the request path.

`RecordWriter.submit` only appends to an in-memory buffer; it never awaits, so recording
adds no latency to a request. A background loop (lifecycle.Periodic) writes the buffer every
`records.flush_interval_s` seconds, or as soon as `records.batch_size` records are
waiting, one batch per transaction (SQLite runs on its own thread, so the event loop
never waits on disk).

What a crash can lose: a clean stop (SIGTERM, Ctrl-C) calls `close()`, which writes
everything still buffered. A hard kill (SIGKILL, OOM killer, power loss) loses at most
the records not yet flushed: about `flush_interval_s` of traffic (0.25 s by default),
or up to `batch_size` records (512) if they arrive faster than that, plus whatever
piled up while the store was unavailable. A batch is written in one transaction, so it
is either stored whole or not at all; records that were stored are never lost or
duplicated (request_id is unique, and a retried batch skips ids already stored).

When the store is up but slower than the requests (one core shared by the event loop and the
store's thread, at a few thousand requests a second), `records.backpressure_pending` records
waiting make the writer `backlogged`: the pipeline then awaits `room()` before a request's
handler returns, which slows the clients down to what the store can write instead of growing
the buffer with the request rate (bench/README.md, "Memory soak": 74,000 records, ~55 MiB, held
at 3,600 requests a second before this). When the store is unavailable nobody waits: the buffer
is bounded by `records.max_pending`, beyond which new records are dropped, counted in
`dropped`, and reported in a warning. A store that stops answering without failing (a frozen
PostgreSQL, a partition: its write hangs until given up, after 10 s on PostgreSQL) is the
same once a request has waited BACKPRESSURE_MAX_WAIT_S in vain while a write hangs: nobody waits
again until a write ends, and the records are kept meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence

from faregate.config import RecordsSettings
from faregate.lifecycle import Periodic
from faregate.store.protocols import RecordTable, StoreUnavailable
from faregate.types import RequestRecord

log = logging.getLogger(__name__)

# Upper bound of the pause between retries while the store is unavailable.
MAX_RETRY_DELAY_S = 5.0
# Tries of the final flush in close() when the store is unavailable, before giving up.
CLOSE_ATTEMPTS = 3
CLOSE_RETRY_DELAY_S = 0.5
# How long close() lets a flush in progress finish before cancelling it (its batch is then
# written again by the final flush; stored ids are skipped).
CLOSE_GRACE_S = 5.0
# The longest `room()` waits: a store that hangs without failing must not hold requests longer.
BACKPRESSURE_MAX_WAIT_S = 2.0


class RecordWriter:
    def __init__(self, table: RecordTable, settings: RecordsSettings | None = None) -> None:
        self._table = table
        self._settings = settings or RecordsSettings()
        self._pending: deque[RequestRecord] = deque()
        self._flush_lock = asyncio.Lock()
        # Every flush_interval_s (or the retry delay while the store is down), sooner when a batch fills.
        self._flusher = Periodic(
            "record-writer", lambda: self._retry_delay or self._settings.flush_interval_s, self._flush_round
        )
        self._closed = False
        # Non-zero while the store is unavailable: how long to wait before trying again.
        self._retry_delay = 0.0
        self._drops_reported = 0
        # Cleared while `backpressure_pending` records wait on a working store (see `room`).
        self._room = asyncio.Event()
        self._room.set()
        # When the write in progress began (None between writes), and whether a request waited
        # BACKPRESSURE_MAX_WAIT_S in vain while it hung: then nobody waits until a write ends.
        self._write_began: float | None = None
        self._hung = False
        # The records of the write in progress (out of `_pending` while it runs).
        self._writing: Sequence[RequestRecord] = ()
        # The flush `flush_within` started and may have left running: later calls wait for it.
        self._waited_flush: asyncio.Future[None] | None = None
        # Counters (for metrics and tests).
        self.written = 0
        self.dropped = 0
        self.duplicates = 0
        self.rejected = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, record: RequestRecord) -> None:
        """Queue a record for writing. Never blocks; drops (and counts) it when the buffer is full."""
        if self._closed or len(self._pending) >= self._settings.max_pending:
            self._drop()
            return
        self._pending.append(record)
        if self._retry_delay or self._hung:
            return
        waiting = len(self._pending)
        limit = self._settings.backpressure_pending
        if limit and waiting >= limit:
            self._room.clear()
            self._flusher.wake()
        elif waiting >= self._settings.batch_size:
            self._flusher.wake()

    def unwritten(self, request_id: str) -> RequestRecord | None:
        """The record of this request if it still waits to be written (pending or being written).
        A scan of the buffer (~20 ms at max_pending's 200,000): for the rare caller that must know
        (a feedback whose record a store that reads but refuses writes does not have)."""
        for record in itertools.chain(self._writing, self._pending):
            if record.request_id == request_id:
                return record
        return None

    @property
    def backlogged(self) -> bool:
        """`backpressure_pending` records wait for a working store: callers should await `room()`."""
        return not self._room.is_set()

    async def room(self) -> None:
        """Wait until the writer is back under `backpressure_pending` (at most
        BACKPRESSURE_MAX_WAIT_S; at once when the store is unavailable, hangs, or the writer closed)."""
        try:
            async with asyncio.timeout(BACKPRESSURE_MAX_WAIT_S):
                await self._room.wait()
        except TimeoutError:
            began = self._write_began
            if began is not None and time.monotonic() - began >= BACKPRESSURE_MAX_WAIT_S:
                self._hangs()

    def _hangs(self) -> None:
        """A write has hung for the whole backpressure limit: the store stopped answering without
        failing, and its write may hang a while yet before it is given up. Waiting would slow every
        request by the limit meanwhile and write nothing sooner."""
        if not self._hung:
            self._hung = True
            log.warning(
                "the request store has not answered a write in %.1fs; requests no longer wait for it,"
                " and %d records are kept until it does",
                BACKPRESSURE_MAX_WAIT_S,
                len(self._pending),
            )
        self._room.set()

    def _update_room(self) -> None:
        limit = self._settings.backpressure_pending
        if self._closed or self._retry_delay or self._hung or not limit or len(self._pending) < limit:
            self._room.set()

    def _drop(self) -> None:
        self.dropped += 1
        # Say so at the first drop at once; later drops are summed up by the flusher, so that an
        # overload does not also flood the log.
        if self.dropped == self._drops_reported + 1:
            reason = "the writer is closed" if self._closed else f"{len(self._pending)} records are pending"
            log.warning("dropping request records: %s (total dropped: %d)", reason, self.dropped)

    def _report_drops(self) -> None:
        if self.dropped > self._drops_reported + 1:
            log.warning(
                "dropped %d request records since the last report (total dropped: %d)",
                self.dropped - self._drops_reported,
                self.dropped,
            )
        self._drops_reported = self.dropped

    async def start(self) -> None:
        if not self._closed:
            self._flusher.start()

    async def flush(self) -> None:
        """Write everything pending now (records stay pending if the store is unavailable)."""
        await self._drain()

    async def flush_within(self, seconds: float) -> bool:
        """`flush`, waited for at most `seconds`: False if it has not ended by then (a write hung on
        a store that stopped answering without failing; it may hang a while yet before it fails).
        The flush is not cancelled but left to end as the writer's own rounds do; a call meanwhile
        waits for the same one, so callers that gave up leave one flush behind, not one each."""
        if self._waited_flush is None or self._waited_flush.done():
            self._waited_flush = asyncio.ensure_future(self._drain())
            self._waited_flush.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({self._waited_flush}, timeout=seconds)
        return bool(done)  # a bug in it is logged (`_retrieved`), as in the writer's own rounds

    async def close(self) -> None:
        """Stop the background task (a flush in progress may finish) and write everything still
        pending. The caller bounds how long this may take (server.app)."""
        self._closed = True
        self._room.set()
        try:
            await self._flusher.stop(grace_s=CLOSE_GRACE_S)
            for attempt in range(CLOSE_ATTEMPTS):
                await self._drain()
                if not self._pending:
                    break
                if attempt + 1 < CLOSE_ATTEMPTS:
                    # Short pauses: a stopping process has a deadline (e.g. a container's grace period).
                    await asyncio.sleep(min(self._retry_delay, CLOSE_RETRY_DELAY_S))
        except asyncio.CancelledError:
            # The caller's bound ran out, as against a store that stopped answering without
            # failing: the records still here (a cancelled write's batch is back among them) are
            # lost with the process. Say how many.
            log.error(
                "closing with %d request records unwritten: the store did not answer in time",
                len(self._pending),
            )
            raise
        if self._pending:
            log.error(
                "closing with %d request records unwritten: the store is unavailable", len(self._pending)
            )
        self._report_drops()

    async def _flush_round(self) -> None:
        try:
            await self._drain()
        except Exception:
            # Never let a bug end the writer: later records would pile up unseen.
            log.exception("request record writer failed; continuing")

    async def _drain(self) -> None:
        async with self._flush_lock:
            while self._pending:
                count = min(self._settings.batch_size, len(self._pending))
                batch = [self._pending.popleft() for _ in range(count)]
                written = await self._write(batch)
                self._update_room()  # after each batch: the waiters go on as soon as it is stored
                if not written:
                    break
            self._report_drops()

    async def _write(self, batch: list[RequestRecord]) -> bool:
        """Write one batch. False when the store is unavailable: the batch is back in the buffer."""
        try:
            inserted = await self._insert(batch)
        except StoreUnavailable as exc:
            self._unavailable(batch, exc)
            return False
        except asyncio.CancelledError:
            # If the write did land, the retry skips the stored ids: nothing is written twice.
            self._requeue(batch)
            raise
        except Exception:
            # A value the store refuses (e.g. a NaN or an unencodable string) would fail every
            # retry of the whole batch; write the rest one by one and drop only the bad records.
            log.exception("a batch of %d request records was refused; writing them one by one", len(batch))
            return await self._write_one_by_one(batch)
        self._retry_delay = 0.0
        self._count(len(batch), inserted)
        return True

    async def _write_one_by_one(self, batch: Sequence[RequestRecord]) -> bool:
        for i, record in enumerate(batch):
            try:
                inserted = await self._insert([record])
            except StoreUnavailable as exc:
                # An outage like any other: back off, and nobody waits on backpressure meanwhile.
                self._unavailable(list(batch[i:]), exc)
                return False
            except asyncio.CancelledError:
                self._requeue(list(batch[i:]))
                raise
            except Exception:
                self.rejected += 1
                log.exception("request record %s was refused by the store and dropped", record.request_id)
                continue
            self._retry_delay = 0.0
            self._count(1, inserted)
        return True

    async def _insert(self, records: Sequence[RequestRecord]) -> int:
        self._write_began, self._writing = time.monotonic(), records
        try:
            inserted = await self._table.insert_records(records)
        finally:
            self._write_began, self._writing = None, ()
        if self._hung:  # (a failure leaves it to `_retry_delay`, which keeps the waits off too)
            self._hung = False
            log.info("the request store answers again; %d records pending", len(self._pending))
        return inserted

    def _unavailable(self, unwritten: list[RequestRecord], exc: StoreUnavailable) -> None:
        """The store is down: the records go back to the buffer and the writer backs off."""
        self._requeue(unwritten)
        self._retry_delay = min(
            max(self._retry_delay * 2, self._settings.flush_interval_s), MAX_RETRY_DELAY_S
        )
        log.warning(
            "request store unavailable (%s); %d records pending, retrying in %.2fs",
            exc,
            len(self._pending),
            self._retry_delay,
        )

    def _count(self, submitted: int, inserted: int) -> None:
        self.written += inserted
        if inserted < submitted:
            self.duplicates += submitted - inserted
            log.warning(
                "skipped %d request records whose request_id was already stored", submitted - inserted
            )

    def _requeue(self, batch: list[RequestRecord]) -> None:
        # Back at the front, in their order, so records are written in submission order.
        self._pending.extendleft(reversed(batch))


def _retrieved(flush: asyncio.Future[None]) -> None:
    """A failure of a flush `flush_within` started is logged (whether or not anyone still waits)."""
    error = None if flush.cancelled() else flush.exception()
    if error is not None:
        log.error("request record flush failed", exc_info=error)
