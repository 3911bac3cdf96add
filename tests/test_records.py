from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from faregate.config import RecordsSettings
from faregate.store.analytics_rows import Dimension, Slice
from faregate.store.protocols import StoreUnavailable
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.store import SQLiteStore
from faregate.telemetry.records import RecordWriter
from faregate.types import Attempt, RequestRecord

SLOW = 60.0  # a flush interval no test waits for


def record(request_id: str, **fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "created_at": 1_700_000_000.0,
        "key_id": "key_a",
        "model_requested": "cheap",
        "model_used": "cheap",
        "provider": "sim",
        "status": 200,
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": Decimal("0.00082"),
    }
    values.update(fields)
    return RequestRecord(request_id=request_id, **values)  # type: ignore[arg-type]


class FakeTable:
    """A RecordTable that remembers batches and can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.stored: dict[str, RequestRecord] = {}
        self.unavailable = 0  # fail this many calls with StoreUnavailable

    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        if self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailable("database is locked")
        self.batches.append([r.request_id for r in records])
        new = [r for r in records if r.request_id not in self.stored]
        self.stored.update((r.request_id, r) for r in new)
        return len(new)

    async def get_record(self, request_id: str) -> RequestRecord | None:
        return self.stored.get(request_id)

    async def count_records(self) -> int:
        return len(self.stored)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(tmp_path)
    yield store
    await store.close()


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll for up to 2 s: for work the writer's background task does on its own schedule."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met within 2 s")


async def test_submit_only_buffers() -> None:
    table = FakeTable()
    writer = RecordWriter(table, RecordsSettings(batch_size=100, flush_interval_s=SLOW))
    assert not inspect.iscoroutinefunction(writer.submit)
    writer.submit(record("r1"))
    assert writer.pending == 1 and table.batches == []
    await writer.close()
    assert table.batches == [["r1"]]


async def test_flush_writes_in_batches_of_batch_size() -> None:
    table = FakeTable()
    writer = RecordWriter(table, RecordsSettings(batch_size=3, flush_interval_s=SLOW))
    for i in range(7):
        writer.submit(record(f"r{i}"))
    await writer.flush()
    assert table.batches == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    assert writer.written == 7 and writer.pending == 0


async def test_full_batch_wakes_the_flusher() -> None:
    table = FakeTable()
    writer = RecordWriter(table, RecordsSettings(batch_size=4, flush_interval_s=SLOW))
    await writer.start()
    for i in range(3):
        writer.submit(record(f"r{i}"))
    await asyncio.sleep(0.02)
    assert table.batches == []  # not a full batch, and the interval is far away
    writer.submit(record("r3"))
    await eventually(lambda: writer.written == 4)
    assert table.batches == [["r0", "r1", "r2", "r3"]]
    await writer.close()


async def test_interval_flushes_partial_batches() -> None:
    table = FakeTable()
    writer = RecordWriter(table, RecordsSettings(batch_size=100, flush_interval_s=0.01))
    await writer.start()
    writer.submit(record("r1"))
    await eventually(lambda: writer.written == 1)
    await writer.close()


async def test_close_writes_everything_pending(store: SQLiteStore) -> None:
    writer = RecordWriter(store, RecordsSettings(batch_size=50, flush_interval_s=SLOW))
    await writer.start()
    for i in range(120):
        writer.submit(record(f"r{i}"))
    await writer.close()
    assert await store.count_records() == 120
    assert writer.written == 120 and writer.pending == 0


async def test_submit_after_close_is_dropped() -> None:
    writer = RecordWriter(FakeTable(), RecordsSettings())
    await writer.close()
    writer.submit(record("late"))
    assert writer.dropped == 1 and writer.pending == 0


async def test_a_record_is_written_exactly_once(store: SQLiteStore) -> None:
    writer = RecordWriter(store, RecordsSettings(batch_size=10, flush_interval_s=SLOW))
    writer.submit(record("same"))
    writer.submit(record("same"))  # same batch
    await writer.flush()
    writer.submit(record("same", status=500))  # later batch
    await writer.close()
    assert await store.count_records() == 1
    assert writer.written == 1 and writer.duplicates == 2
    stored = await store.get_record("same")
    assert stored is not None and stored.status == 200  # the first write stands


async def test_buffer_is_bounded_and_drops_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    table = FakeTable()
    writer = RecordWriter(table, RecordsSettings(batch_size=100, flush_interval_s=SLOW, max_pending=5))
    with caplog.at_level(logging.WARNING, logger="faregate.telemetry.records"):
        for i in range(8):
            writer.submit(record(f"r{i}"))
        assert writer.pending == 5 and writer.dropped == 3
        await writer.flush()
    assert sorted(table.stored) == [f"r{i}" for i in range(5)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one at the first drop, one summary at the flush, not one per drop
    assert "total dropped: 3" in warnings[-1]


async def test_unavailable_store_keeps_records_in_order_for_a_retry() -> None:
    table = FakeTable()
    table.unavailable = 1
    writer = RecordWriter(table, RecordsSettings(batch_size=2, flush_interval_s=0.01))
    for i in range(3):
        writer.submit(record(f"r{i}"))
    await writer.flush()
    assert writer.pending == 3 and writer.written == 0
    await writer.start()
    await eventually(lambda: writer.written == 3)
    assert table.batches == [["r0", "r1"], ["r2"]]
    await writer.close()


async def test_a_bad_record_is_dropped_alone(store: SQLiteStore) -> None:
    writer = RecordWriter(store, RecordsSettings(batch_size=10, flush_interval_s=SLOW))
    writer.submit(record("good1"))
    writer.submit(record("bad", cost_usd=Decimal("NaN")))
    writer.submit(record("good2"))
    await writer.close()
    assert writer.rejected == 1 and writer.written == 2
    assert await store.get_record("bad") is None
    assert await store.count_records() == 2


async def test_record_round_trip_is_exact(store: SQLiteStore) -> None:
    original = record(
        "rt",
        cost_usd=Decimal("0.00082"),
        stream=True,
        usage_estimated=True,
        latency_ms=123.25,
        ttft_ms=45.5,
        empty_response=True,
        error="upstream_failed",
        key_id=None,
        attempts=[
            Attempt("cheap", "sim", "server_error", 10.5, "HTTP 503", 503),
            Attempt("cheap", "other", "ok", 20.0),
        ],
    )
    assert await store.insert_records([original]) == 1
    assert await store.get_record("rt") == original
    stored = await store.get_record("rt")
    assert stored is not None and str(stored.cost_usd) == "0.00082"
    assert await store.get_record("missing") is None


async def usage(store: SQLiteStore, since: float, until: float, by: Dimension) -> list[tuple[object, ...]]:
    """(group, requests, errors >= 400, prompt, completion, cost) per group, as `faregate usage`
    reads them."""
    analytics = await SQLiteAnalytics.open(store.path)
    try:
        groups = await analytics.breakdown(Slice(since, until), by, 1000)
    finally:
        await analytics.close()
    return [
        (g.group, t.requests, t.errors + t.client_errors, t.prompt_tokens, t.completion_tokens, t.cost)
        for g in groups
        for t in [g.totals]
    ]


async def test_records_are_totalled_exactly_in_sql(store: SQLiteStore) -> None:
    t = 1_700_000_000.0
    await store.insert_records(
        [
            # 0.1 + 0.2 is 0.30000000000000004 in floats
            record(
                "a",
                created_at=t,
                model_used="m1",
                cost_usd=Decimal("0.1"),
                key_id="k1",
                provider="p1",
                route="r",
            ),
            record(
                "b",
                created_at=t + 1,
                model_used="m1",
                cost_usd=Decimal("0.2"),
                key_id="k2",
                provider="p1",
                route="r",
            ),
            record(
                "c",
                created_at=t + 2,
                model_used="m2",
                cost_usd=Decimal("0.00082"),
                key_id="k1",
                provider="p2",
            ),
            record(
                "d",
                created_at=t + 3,
                model_requested="m3",
                model_used=None,
                provider=None,
                status=502,
                prompt_tokens=0,
                completion_tokens=0,
                cost_usd=Decimal(0),
                key_id="k2",
            ),
            record("old", created_at=t - 100, model_used="m1", cost_usd=Decimal(5)),
        ]
    )
    by_model = await usage(store, t, t + 10, "model")
    assert by_model == [
        ("m1", 2, 0, 20, 10, Decimal("0.3")),
        ("m2", 1, 0, 10, 5, Decimal("0.00082")),
        ("m3", 1, 1, 0, 0, Decimal(0)),  # a request that failed everywhere counts as the model asked
    ]
    by_key = {row[0]: row for row in await usage(store, t, t + 10, "key")}
    assert by_key["k1"][5] == Decimal("0.10082") and by_key["k1"][1] == 2
    assert by_key["k2"][5] == Decimal("0.2") and by_key["k2"][2] == 1
    by_provider = {row[0]: row[1] for row in await usage(store, t, t + 10, "provider")}
    assert by_provider == {"p1": 2, "p2": 1, None: 1}
    by_route = {row[0]: (row[1], row[5]) for row in await usage(store, t, t + 10, "route")}
    assert by_route == {"r": (2, Decimal("0.3")), None: (2, Decimal("0.00082"))}

    assert [r[0] for r in await usage(store, t + 1, t + 2, "model")] == ["m1"]  # until is exclusive
    everything = await usage(store, 0.0, t + 10, "model")
    assert sum((r[5] for r in everything), Decimal(0)) == Decimal("5.30082")  # type: ignore[misc]
    assert await store.count_records() == 5


class HeldTable(FakeTable):
    """A FakeTable whose writes wait until `go` is set: a store slower than the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        await self.go.wait()
        return await super().insert_records(records)


async def test_a_backlog_holds_requests_until_the_store_catches_up() -> None:
    # The soak's extra memory at a high rate was this buffer (74,000 records at 3,600 req/s):
    # past backpressure_pending, callers wait for room instead of the buffer growing.
    table = HeldTable()
    writer = RecordWriter(
        table, RecordsSettings(batch_size=4, flush_interval_s=SLOW, backpressure_pending=10)
    )
    await writer.start()
    for i in range(9):
        writer.submit(record(f"r{i}"))
    assert not writer.backlogged
    writer.submit(record("r9"))
    assert writer.backlogged
    waiting = asyncio.create_task(writer.room())
    await asyncio.sleep(0.02)
    assert not waiting.done()  # the store has written nothing yet
    table.go.set()
    await asyncio.wait_for(waiting, 2)
    assert not writer.backlogged
    await writer.close()
    assert len(table.stored) == 10 and writer.dropped == 0


async def test_no_backpressure_while_the_store_is_unavailable() -> None:
    # An outage must not stall serving: records pile up to max_pending, nobody waits.
    table = FakeTable()
    table.unavailable = 1_000
    writer = RecordWriter(
        table, RecordsSettings(batch_size=4, flush_interval_s=SLOW, backpressure_pending=10)
    )
    for i in range(10):
        writer.submit(record(f"r{i}"))
    await writer.flush()  # fails: the writer now retries later
    assert writer.pending == 10 and not writer.backlogged
    for i in range(10, 30):
        writer.submit(record(f"r{i}"))
    assert not writer.backlogged
    await asyncio.wait_for(writer.room(), 1)


async def test_backpressure_can_be_turned_off() -> None:
    writer = RecordWriter(
        FakeTable(), RecordsSettings(batch_size=100, flush_interval_s=SLOW, backpressure_pending=0)
    )
    for i in range(500):
        writer.submit(record(f"r{i}"))
    assert not writer.backlogged
    await writer.close()


class RefusingThenDownTable(FakeTable):
    """Refuses a whole batch (a bad value in it), then goes down while it is written one by one."""

    async def insert_records(self, records: Sequence[RequestRecord]) -> int:
        if len(records) > 1:
            raise ValueError("a value the store refuses")
        raise StoreUnavailable("connection lost")


async def test_an_outage_during_one_by_one_writes_is_an_outage() -> None:
    # The store going down while a refused batch is written record by record must be handled as
    # any outage: back off, and no request waits on backpressure for a store that cannot write.
    writer = RecordWriter(
        RefusingThenDownTable(), RecordsSettings(batch_size=4, flush_interval_s=SLOW, backpressure_pending=10)
    )
    for i in range(4):
        writer.submit(record(f"r{i}"))
    await writer.flush()
    assert writer.pending == 4 and writer.rejected == 0
    for i in range(4, 30):
        writer.submit(record(f"r{i}"))
    assert not writer.backlogged


async def test_a_store_that_stops_answering_holds_requests_once_then_keeps_their_records(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL frozen under load: the writer's insert hangs without failing (up to the pool's
    statement timeout twice over), so the writer never learns the store is unavailable. Every
    request then waited the whole backpressure limit, for minutes. Once one has waited it in vain
    while a write hangs, nobody waits until a write ends; the records are kept (up to max_pending,
    the rest counted as dropped) and written once the store answers, and backpressure works again."""
    from faregate.telemetry import records as records_module

    monkeypatch.setattr(records_module, "BACKPRESSURE_MAX_WAIT_S", 0.2)
    table = HeldTable()
    writer = RecordWriter(
        table, RecordsSettings(batch_size=4, flush_interval_s=SLOW, backpressure_pending=10, max_pending=40)
    )
    await writer.start()
    for i in range(10):
        writer.submit(record(f"r{i}"))
    assert writer.backlogged
    await writer.room()  # waits the limit: the write hangs
    assert not writer.backlogged, "every later request would wait the limit again"
    for i in range(10, 45):
        writer.submit(record(f"r{i}"))
        assert not writer.backlogged
    await asyncio.wait_for(writer.room(), 1)  # at once
    assert writer.dropped == 1  # r44: 4 in the hung write and 40 pending is all the buffer holds
    assert "request store has not answered a write" in caplog.text
    table.go.set()
    await writer.flush()
    assert len(table.stored) == 44 and writer.pending == 0
    for i in range(45, 55):
        writer.submit(record(f"r{i}"))
    assert writer.backlogged  # the store answers again: backpressure as before
    await asyncio.wait_for(writer.room(), 1)
    await writer.close()
    assert len(table.stored) == 54


async def test_a_stop_cut_short_by_a_hung_store_says_how_many_records_it_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway gives the last flush RECORDS_CLOSE_TIMEOUT_S and then cancels it. Against a
    store that stopped answering without failing the flush hangs until then, and the records it
    could not write were lost without a word: the log said only that the close gave up."""
    from faregate.telemetry import records as records_module

    monkeypatch.setattr(records_module, "CLOSE_GRACE_S", 0.05)
    table = HeldTable()  # never answers
    writer = RecordWriter(table, RecordsSettings(batch_size=4, flush_interval_s=SLOW))
    await writer.start()
    for i in range(10):
        writer.submit(record(f"r{i}"))
    await asyncio.sleep(0)  # the full batch woke the flusher: its write hangs
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # as lifecycle bounds it
            await writer.close()
    assert writer.pending == 10
    assert "closing with 10 request records unwritten" in caplog.text


@contextlib.asynccontextmanager
async def feedback_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table_of: Callable[[SQLiteStore], object]
) -> AsyncIterator[tuple[Any, Any, dict[str, str], str]]:
    """An in-process gateway on SQLite whose record writer writes through `table_of(its store)`
    (the seam the writer uses), a client of it, an API key's Authorization header and its key id."""
    from aiohttp.test_utils import TestClient, TestServer

    from faregate.config import load_settings
    from faregate.server import app as app_module
    from faregate.server import feedback as feedback_module
    from faregate.server.app import build_gateway, create_app
    from harness import MASTER_KEY

    def writer(store: SQLiteStore, settings: RecordsSettings) -> RecordWriter:
        return RecordWriter(table_of(store), settings)  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "RecordWriter", writer)
    monkeypatch.setattr(feedback_module, "RECORD_WRITE_WAIT_S", 0.2)
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    gateway = await build_gateway(settings)
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with TestClient(TestServer(create_app(gateway))) as client:
        created = await (await client.post("/admin/keys", headers=admin, json={"name": "fb"})).json()
        yield gateway, client, {"Authorization": f"Bearer {created['api_key']}"}, created["id"]


async def test_feedback_waits_for_a_hung_record_write_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/feedback for a request whose record is not stored yet has the writer write what
    it holds. A write hung on a store that stopped answering without failing (a partitioned
    PostgreSQL connection: up to the statement timeout twice over) held the feedback as long; it
    is a prompt 503 store_unavailable now, and the feedback is taken once the record is stored."""
    held = asyncio.Event()
    go = asyncio.Event()

    class HungTable:
        def __init__(self, store: SQLiteStore) -> None:
            self.store = store

        async def insert_records(self, records: Sequence[RequestRecord]) -> int:
            held.set()
            await go.wait()
            return await self.store.insert_records(records)

    async with feedback_client(tmp_path, monkeypatch, HungTable) as (gateway, client, auth, key_id):
        try:
            request_id = "req_" + "a" * 32
            gateway.records.submit(record(request_id, created_at=time.time(), key_id=key_id))
            await asyncio.wait_for(held.wait(), 10)  # the writer's round: hung
            body = {"request_id": request_id, "score": "up"}
            async with asyncio.timeout(10):  # it waited for the hung write, for as long as it hung
                refused = await client.post("/v1/feedback", json=body, headers=auth)
            assert refused.status == 503, await refused.text()
            assert (await refused.json())["error"]["code"] == "store_unavailable"
            go.set()
            taken = await client.post("/v1/feedback", json=body, headers=auth)
            assert taken.status == 200, await taken.text()
        finally:
            go.set()  # the writer's last flush, as the gateway closes, does not hang either


async def test_feedback_for_a_record_the_store_cannot_write_yet_is_a_503_not_a_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that reads but refuses writes for now (a disk full; a read-only standby mid-failover)
    keeps the writer's records pending. A feedback for one of them was told 404 "no request with
    id ... was made with this API key", as if the id were wrong: it is a 503 to retry, and taken
    once the record is stored. Another key still gets the 404 of an unknown id (no oracle)."""
    from harness import MASTER_KEY

    class FullDiskTable:
        def __init__(self, store: SQLiteStore) -> None:
            self.store = store
            self.full = True

        async def insert_records(self, records: Sequence[RequestRecord]) -> int:
            if self.full:
                raise StoreUnavailable("could not extend file: No space left on device")
            return await self.store.insert_records(records)

    tables: list[FullDiskTable] = []

    def full_disk(store: SQLiteStore) -> FullDiskTable:
        tables.append(FullDiskTable(store))
        return tables[-1]

    async with feedback_client(tmp_path, monkeypatch, full_disk) as (gateway, client, auth, key_id):
        request_id = "req_" + "b" * 32
        gateway.records.submit(record(request_id, created_at=time.time(), key_id=key_id))
        body = {"request_id": request_id, "score": "down"}
        refused = await client.post("/v1/feedback", json=body, headers=auth)
        assert refused.status == 503, await refused.text()
        assert (await refused.json())["error"]["code"] == "store_unavailable"
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        other = await (await client.post("/admin/keys", headers=admin, json={"name": "other"})).json()
        stranger = await client.post(
            "/v1/feedback", json=body, headers={"Authorization": f"Bearer {other['api_key']}"}
        )
        assert stranger.status == 404 and (await stranger.json())["error"]["code"] == "request_not_found"
        tables[0].full = False
        taken = await client.post("/v1/feedback", json=body, headers=auth)
        assert taken.status == 200, await taken.text()
