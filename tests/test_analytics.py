"""The dashboard's SQL on a small store whose every figure is computed by hand below."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from faregate.store.analytics_rows import Slice, bucket_width, histogram_percentiles
from faregate.store.feedback import Feedback
from faregate.store.rows import RECORD_COLUMNS, attempt_summary, record_to_row
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.feedback import SQLiteFeedbackTable
from faregate.store.sqlite.rollup import RollupWriter
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import Attempt, RequestRecord

H = 1_700_000_000 // 3600 * 3600  # an hour boundary
UNTIL = H + 3 * 3600 + 60
D = Decimal


def ok(model: str, provider: str) -> Attempt:
    return Attempt(model, provider, "ok", 10.0)


def failed(model: str, provider: str, outcome: str) -> Attempt:
    return Attempt(model, provider, outcome, 10.0, status=500)


def rec(n: int, at: float, **fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "created_at": at,
        "key_id": "k1",
        "model_requested": "A",
        "model_used": "A",
        "provider": "p1",
        "status": 200,
        "stream": False,
        "route": "chat",
    }
    values.update(fields)
    return RequestRecord(request_id=f"r{n}", **values)  # type: ignore[arg-type]


# r1..r8: hours H, H+1h, H+2h (whole hours) and H+3h (the partial hour at the end of the range).
RECORDS = [
    rec(1, H + 10, prompt_tokens=100, completion_tokens=50, cost_usd=D("0.001"), baseline_cost_usd=D("0.010"),
        latency_ms=100.0, attempts=[ok("A", "p1")]),
    rec(2, H + 3610, key_id="k2", wire="messages", prompt_tokens=200, completion_tokens=100,
        cost_usd=D("0.002"), baseline_cost_usd=D("0.020"), latency_ms=200.0, ttft_ms=50.0, stream=True,
        attempts=[failed("A", "p1", "rate_limited"), ok("A", "p1")]),  # a retry
    rec(3, H + 7210, model_used="B", provider="p2", route="code", wire="responses", prompt_tokens=300,
        completion_tokens=0, cost_usd=D("0.003"), baseline_cost_usd=D("0.030"), latency_ms=300.0,
        empty_response=True, attempts=[failed("A", "p1", "timeout"), ok("B", "p2")]),  # a fallback
    rec(4, H + 7220, model_used=None, provider=None, status=502, latency_ms=400.0, error="all failed",
        attempts=[failed("A", "p1", "server_error"), failed("A", "p1", "server_error")]),  # retried, failed
    rec(5, H + 7230, key_id="k2", prompt_tokens=100, completion_tokens=50, baseline_cost_usd=D("0.010"),
        latency_ms=2.0, cache_status="hit"),
    rec(6, H + 7240, key_id="k2", model_requested="B", model_used="B", provider="p2", route="code",
        prompt_tokens=10, completion_tokens=10, baseline_cost_usd=D("0.001"), latency_ms=3.0,
        cache_status="semantic-hit"),
    rec(7, H + 7250, model_used=None, provider=None, status=429, latency_ms=1.0, error="rate limited"),
    rec(8, H + 3 * 3600 + 5, prompt_tokens=100, completion_tokens=100, cost_usd=D("0.004"),
        baseline_cost_usd=D("0.040"), latency_ms=500.0, cache_status="miss", attempts=[ok("A", "p1")]),
]  # fmt: skip


@dataclass
class Db:
    store: SQLiteStore
    analytics: SQLiteAnalytics
    rollup: RollupWriter


@pytest.fixture()
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    store = await SQLiteStore.open(tmp_path)
    await store.insert_records(RECORDS)
    analytics = await SQLiteAnalytics.open(store.path)
    feedback = SQLiteFeedbackTable(analytics.connection)
    await feedback.upsert(Feedback("r1", "k1", H + 100, thumb="up"))
    await feedback.upsert(Feedback("r2", "k2", H + 3700, rating=2))
    await feedback.upsert(Feedback("r3", "k1", H + 7300, thumb="down", comment="empty answer"))
    try:
        yield Db(store, analytics, RollupWriter(analytics.connection, chunk=3))
    finally:
        await analytics.close()
        await store.close()


ALL = Slice(H, UNTIL)


async def check_totals(a: SQLiteAnalytics) -> None:
    t = await a.totals(ALL)
    assert (t.requests, t.errors, t.client_errors, t.rate_limited, t.budget_refusals) == (8, 1, 1, 1, 0)
    assert t.cost == D("0.010") and t.baseline == D("0.111") and t.savings == D("0.101")
    assert (t.prompt_tokens, t.completion_tokens) == (810, 310)
    assert (t.cache_lookups, t.cache_hits, t.semantic_hits) == (3, 1, 1)
    assert t.cache_saved == D("0.011")  # the hits' whole baseline
    assert t.empty_responses == 1


async def check_breakdowns(a: SQLiteAnalytics) -> None:
    by_model = {g.group: g.totals for g in await a.breakdown(ALL, "model")}
    assert {m: (t.requests, t.cost) for m, t in by_model.items()} == {
        "A": (6, D("0.007")),
        "B": (2, D("0.003")),
    }
    by_key = {g.group: (g.totals.requests, g.totals.cost) for g in await a.breakdown(ALL, "key")}
    assert by_key == {"k1": (5, D("0.008")), "k2": (3, D("0.002"))}
    by_provider = {g.group: (g.totals.requests, g.totals.cost) for g in await a.breakdown(ALL, "provider")}
    assert by_provider == {"p1": (4, D("0.007")), "p2": (2, D("0.003")), None: (2, D(0))}
    by_route = [(g.group, g.totals.requests) for g in await a.breakdown(ALL, "route")]
    assert by_route == [("chat", 6), ("code", 2)]  # most expensive first
    by_wire = {g.group: (g.totals.requests, g.totals.cost) for g in await a.breakdown(ALL, "wire")}
    assert by_wire == {"chat": (6, D("0.005")), "messages": (1, D("0.002")), "responses": (1, D("0.003"))}


async def check_series(a: SQLiteAnalytics) -> None:
    points = [(int(g.group or 0), g.totals.requests, g.totals.cost) for g in await a.series(ALL, 3600)]
    assert points == [
        (H, 1, D("0.001")),
        (H + 3600, 1, D("0.002")),
        (H + 7200, 5, D("0.003")),
        (H + 10800, 1, D("0.004")),
    ]


async def check_reliability(a: SQLiteAnalytics) -> None:
    (overall,) = await a.reliability(ALL, None)
    assert (overall.requests, overall.errors, overall.fallbacks, overall.retried) == (8, 1, 1, 2)
    by_route = {r.group: (r.requests, r.errors, r.empty_responses, r.fallbacks, r.retried) for r in
                await a.reliability(ALL, "route")}  # fmt: skip
    assert by_route == {"chat": (6, 1, 0, 0, 2), "code": (2, 0, 1, 1, 0)}
    failures = await a.failed_attempts_by_offer(ALL)
    assert failures == [
        ("p1", "A", "server_error", 2),
        ("p1", "A", "rate_limited", 1),
        ("p1", "A", "timeout", 1),
    ]


async def test_figures_from_the_records(db: Db) -> None:
    await check_totals(db.analytics)
    await check_breakdowns(db.analytics)
    await check_series(db.analytics)
    await check_reliability(db.analytics)


async def test_the_same_figures_from_the_rollup_with_edges_and_late_records(db: Db) -> None:
    assert await db.rollup.catch_up() == len(RECORDS)
    assert await db.rollup.step() == 0
    await check_totals(db.analytics)
    await check_breakdowns(db.analytics)
    await check_series(db.analytics)
    await check_reliability(db.analytics)
    # A record written after the rollup ran, for an hour it already covers, still counts.
    late = rec(9, H + 20, key_id="k2", cost_usd=D("0.5"), baseline_cost_usd=D("1"), attempts=[ok("A", "p1")])
    await db.store.insert_records([late])
    t = await db.analytics.totals(ALL)
    assert (t.requests, t.cost, t.baseline) == (9, D("0.510"), D("1.111"))
    # A range that starts mid-hour reads that partial hour from the records.
    later = await db.analytics.totals(Slice(H + 15, UNTIL))
    assert (later.requests, later.cost) == (8, D("0.509"))
    k2_only = Slice(H, UNTIL, keys=("k2",))
    narrowed = {g.group: g.totals.requests for g in await db.analytics.breakdown(k2_only, "key")}
    assert narrowed == {"k2": 4}
    await db.rollup.catch_up()
    assert (await db.analytics.totals(ALL)).cost == D("0.510")


async def test_a_rollup_step_between_reading_the_watermark_and_the_query_counts_nothing_twice(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rollup runs on a connection of its own, every few seconds: it may commit a step while a
    # dashboard query is being put together. The figures must not count its records twice.
    assert await db.rollup.step() == 3  # chunk=3: r1..r3 in the sums, r4..r8 pending
    pending = db.analytics._pending

    async def a_step_commits_meanwhile() -> tuple[str, list[object]] | None:
        found = await pending()
        await db.rollup.step()
        return found

    monkeypatch.setattr(db.analytics, "_pending", a_step_commits_meanwhile)
    await check_totals(db.analytics)
    await check_breakdowns(db.analytics)
    await check_series(db.analytics)
    await check_reliability(db.analytics)


async def test_filters_on_one_or_several_dimensions(db: Db) -> None:
    await db.rollup.catch_up()
    t = await db.analytics.totals(Slice(H, UNTIL, model="B"))
    assert (t.requests, t.cost) == (2, D("0.003"))
    # Two dimensions at once: read from the records (the rollup has one dimension per row).
    by_model = await db.analytics.breakdown(Slice(H, UNTIL, route="chat", keys=("k1",)), "model")
    assert [(g.group, g.totals.requests) for g in by_model] == [("A", 4)]
    assert (await db.analytics.totals(Slice(H, UNTIL, keys=()))).requests == 0


async def test_latency_percentiles_per_route(db: Db) -> None:
    rows, step = await db.analytics.latency(ALL, "route")
    assert step == 1
    by_route = {r.group: r for r in rows}
    # chat, 4xx left out: 2, 100, 200, 400, 500 ms. Nearest rank: p50 is the 3rd, p95 and p99 the 5th;
    # each is reported as the middle of its bucket (1 ms wide below 100 ms, 10 ms below 1 s).
    chat = by_route["chat"]
    latency = chat.latency
    assert (latency.count, latency.p50, latency.p95, latency.p99) == (5, 205.0, 505.0, 505.0)
    assert (chat.ttft.count, chat.ttft.p50) == (1, 50.5)
    code = by_route["code"]
    assert (code.latency.p50, code.latency.p99) == (3.5, 305.0)


async def test_feedback_joined_to_requests(db: Db) -> None:
    rows = {r.group: r for r in await db.analytics.feedback(ALL, "model")}
    a, b = rows["A"], rows["B"]
    assert (a.count, a.thumbs_up, a.thumbs_down, a.ratings) == (2, 1, 0, 1)
    assert (a.avg_rating, a.satisfaction) == (2.0, 62.5)
    assert (b.count, b.thumbs_down, b.satisfaction) == (1, 1, 0.0)
    # By when the feedback was given: only r3's (at H+7300) is after H+2h.
    late = await db.analytics.feedback(Slice(H + 7200, UNTIL), None, by_feedback_time=True)
    assert [(r.count, r.satisfaction) for r in late] == [(1, 0.0)]
    # A second score for a request replaces the first.
    await SQLiteFeedbackTable(db.analytics.connection).upsert(Feedback("r3", "k1", H + 7400, thumb="up"))
    rows = {r.group: r for r in await db.analytics.feedback(ALL, "model")}
    assert (rows["B"].count, rows["B"].satisfaction) == (1, 100.0)


async def test_recent_requests_search_and_paging(db: Db) -> None:
    newest = await db.analytics.recent(ALL, limit=3)
    assert [r["request_id"] for r in newest] == ["r8", "r7", "r6"]
    older = await db.analytics.recent(ALL, limit=3, before=newest[-1]["created_at"])
    assert [r["request_id"] for r in older] == ["r5", "r4", "r3"]
    assert [r["request_id"] for r in await db.analytics.recent(ALL, search="rate limit")] == ["r7"]
    assert [r["request_id"] for r in await db.analytics.recent(ALL, search="semantic")] == ["r6"]
    assert [r["request_id"] for r in await db.analytics.recent(ALL, search="r2")] == ["r2"]
    assert await db.analytics.recent(ALL, search="100%") == []  # LIKE wildcards are literal
    assert '"rate_limited"' in (await db.analytics.recent(ALL, search="r2"))[0]["attempts"]


async def test_latency_over_a_sample_when_the_range_is_large(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    import faregate.store.analytics_queries as analytics_module

    monkeypatch.setattr(analytics_module, "SAMPLE_SIZE", 4)
    rows, step = await db.analytics.latency(ALL, None)
    assert step == 2  # 8 ids, every 2nd: r1, r3, r5, r7 (a 4xx, left out)
    assert rows[0].latency.count == 3


def test_histogram_percentiles_nearest_rank() -> None:
    assert histogram_percentiles([]) == [None, None, None]
    assert histogram_percentiles([(10.0, 99), (2000.0, 1)]) == [10.5, 10.5, 10.5]
    assert histogram_percentiles([(10.0, 98), (2000.0, 2)]) == [10.5, 10.5, 2050.0]
    assert [bucket_width(v) for v in (0.0, 99.0, 100.0, 990.0, 1000.0, 10000.0)] == [1, 1, 10, 10, 100, 1000]


async def test_a_store_rolled_up_before_the_wire_was_summed_is_rolled_up_again(tmp_path: Path) -> None:
    """Migration 15: hours rolled up by an earlier version have no per-wire sums, so the rollup
    starts again from the first record; every figure stays exact, the wire's included."""
    from faregate.store.sqlite.migrations import MIGRATIONS

    # Every migration but 15 (the records' columns of later ones are what this rollup reads).
    store = await SQLiteStore.open(tmp_path, migrations=[m for m in MIGRATIONS if m.version != 15])
    await store.insert_records(RECORDS)
    analytics = await SQLiteAnalytics.open(store.path)
    rollup = RollupWriter(analytics.connection, chunk=3)
    assert await rollup.catch_up() == len(RECORDS)
    # As an earlier version left it: its sums per model, provider, key and route only.
    await analytics.connection.execute("DELETE FROM rollup_hourly WHERE dim = 'wire'")
    await analytics.connection.commit()
    await analytics.close()
    await store.close()
    store = await SQLiteStore.open(tmp_path)
    analytics = await SQLiteAnalytics.open(store.path)
    try:
        await check_breakdowns(analytics)  # read from the records: nothing is rolled up now
        assert await RollupWriter(analytics.connection, chunk=3).catch_up() == len(RECORDS)
        await check_totals(analytics)
        await check_breakdowns(analytics)
        await check_reliability(analytics)
    finally:
        await analytics.close()
        await store.close()


def insert_as_before_16(db_path: Path, records: Sequence[RequestRecord]) -> None:
    """Write records as a store before migration 16 did: without the attempts' summary columns."""
    n = len(RECORD_COLUMNS)
    with closing(sqlite3.connect(db_path)) as conn:
        conn.executemany(
            f"INSERT INTO request_records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * n)})",
            [record_to_row(r)[:n] for r in records],
        )
        conn.commit()


def test_attempt_summary_counts_fallbacks_and_retries_as_the_rollup_did() -> None:
    p1, p2 = ok("A", "p1"), ok("B", "p2")
    assert attempt_summary([]) == (0, 0, 0)
    assert attempt_summary([failed("A", "p1", "timeout")]) == (1, 0, 0)  # one attempt: neither
    assert attempt_summary([failed("A", "p1", "rate_limited"), p1]) == (2, 0, 1)  # a retry
    assert attempt_summary([failed("A", "p1", "timeout"), p2]) == (2, 1, 0)  # a fallback
    assert attempt_summary([failed("A", "p1", "timeout"), p1, p2]) == (3, 1, 1)  # both
    # A cascade's escalation and an LLM judge's call answered: not failures.
    assert attempt_summary([Attempt("A", "p1", "escalated", 1.0), Attempt("A", "p1", "judge", 1.0), p2]) == (
        3,
        0,
        0,
    )
    # Everything failed: a failure on another offer than the last one is still a fallback.
    assert attempt_summary([failed("A", "p1", "server_error"), failed("B", "p2", "timeout")]) == (2, 1, 0)


# Attempt shapes the attempt loop and the cascades write, beside RECORDS' own.
SHAPES = [
    [Attempt("C", "p3", "escalated", 5.0), ok("A", "p1")],
    [Attempt("C", "p3", "judge", 5.0), ok("A", "p1")],
    [Attempt("C", "p3", "escalated", 5.0), Attempt("C", "p3", "judge", 5.0), ok("A", "p1")],
    [failed("A", "p1", "server_error"), Attempt("C", "p3", "empty", 5.0), ok("A", "p1")],
    [failed("A", "p1", "timeout"), failed("A", "p1", "timeout"), ok("B", "p2")],
    [failed("A", "p1", "server_error"), failed("C", "p3", "connect_error")],
    [Attempt("A", "p1", "escalated", 5.0), ok("A", "p1")],
]


async def test_migration_16_fills_old_records_as_the_rollup_counted_them(tmp_path: Path) -> None:
    """Records written before migration 16 get their attempts' summary from their JSON, by the SQL
    the rollup used to run on every record: the same values as attempt_summary gives new records,
    so the rollup and every reliability figure are the same before and after."""
    from faregate.store.sqlite.migrations import MIGRATIONS

    extra = [
        rec(100 + i, H + 7300 + i, status=502 if a[-1].outcome != "ok" else 200, attempts=a)
        for i, a in enumerate(SHAPES)
    ]
    records = [*RECORDS, *extra]
    old = tmp_path / "old"
    store = await SQLiteStore.open(old, migrations=[m for m in MIGRATIONS if m.version < 16])
    insert_as_before_16(store.path, records)
    await store.close()
    upgraded = await SQLiteStore.open(old)
    fresh = await SQLiteStore.open(tmp_path / "new")
    await fresh.insert_records(records)
    summaries = (
        "SELECT request_id, attempt_count, fell_back, retried FROM request_records ORDER BY request_id"
    )
    expected = sorted((r.request_id, *attempt_summary(r.attempts)) for r in records)
    readers = [await SQLiteAnalytics.open(upgraded.path), await SQLiteAnalytics.open(fresh.path)]
    try:
        assert {s[2] for s in expected} == {0, 1} and {s[3] for s in expected} == {0, 1}
        for reader in readers:
            assert [tuple(row) for row in await reader.connection.execute_fetchall(summaries)] == expected
        before_rollup = [await r.reliability(ALL, "provider") for r in readers]
        failures = [await r.failed_attempts_by_offer(ALL) for r in readers]
        for reader in readers:
            assert await RollupWriter(reader.connection, chunk=4).catch_up() == len(records)
        assert before_rollup[0] == before_rollup[1]
        assert [await r.reliability(ALL, "provider") for r in readers] == before_rollup
        assert [await r.failed_attempts_by_offer(ALL) for r in readers] == failures
        rollups = [
            await r.connection.execute_fetchall("SELECT * FROM rollup_hourly ORDER BY dim, value, bucket")
            for r in readers
        ]
        assert rollups[0] == rollups[1]
    finally:
        for reader in readers:
            await reader.close()
        await upgraded.close()
        await fresh.close()


# A request that retried and fell back, and still ended in a 4xx (the last upstream refused the
# input): a refusal, in neither the fallbacks nor the retries (store/record_sums.py, _TAKEN_ON).
REFUSED_AFTER_FALLBACK = rec(
    9, H + 7260, model_used=None, provider=None, status=400, error="refused",
    attempts=[failed("A", "p1", "timeout"), failed("A", "p1", "timeout"),
              Attempt("B", "p2", "rejected", 10.0, status=400)],
)  # fmt: skip
# The rollup rows that record adds to: every dimension's group of it.
REFUSED_GROUPS = (
    "(('', ''), ('model', 'A'), ('provider', ''), ('key', 'k1'), ('route', 'chat'), ('wire', 'chat'))"
)
# As a version before the fallback and retry sums left 4xx out rolled it up.
COUNTED_AS_BEFORE = (
    "UPDATE rollup_hourly SET fallbacks = fallbacks + 1, retried = retried + 1"
    f" WHERE bucket = {H + 7200} AND (dim, value) IN {REFUSED_GROUPS}"
)


async def test_a_store_rolled_up_when_refusals_counted_as_fallbacks_is_rolled_up_again(
    tmp_path: Path,
) -> None:
    """Migration 20: hours rolled up before the fallback and retry sums were of the requests taken
    on count a 4xx that fell back; a range read them beside hours that do not. The rollup starts
    again, and every reliability figure is the records' own."""
    from faregate.store.sqlite.migrations import MIGRATIONS

    records = [*RECORDS, REFUSED_AFTER_FALLBACK]
    store = await SQLiteStore.open(tmp_path, migrations=[m for m in MIGRATIONS if m.version < 20])
    await store.insert_records(records)
    analytics = await SQLiteAnalytics.open(store.path)
    expected = [await analytics.reliability(ALL, by) for by in (None, "key", "model")]  # the records'
    failures = await analytics.failed_attempts_by_offer(ALL)
    assert await RollupWriter(analytics.connection, chunk=3).catch_up() == len(records)
    await analytics.connection.execute(COUNTED_AS_BEFORE)
    await analytics.connection.commit()
    assert await analytics.reliability(ALL, None) != expected[0]  # what the dashboard read
    await analytics.close()
    await store.close()
    store = await SQLiteStore.open(tmp_path)
    analytics = await SQLiteAnalytics.open(store.path)
    try:
        assert [await analytics.reliability(ALL, by) for by in (None, "key", "model")] == expected
        assert await RollupWriter(analytics.connection, chunk=3).catch_up() == len(records)
        assert [await analytics.reliability(ALL, by) for by in (None, "key", "model")] == expected
        assert await analytics.failed_attempts_by_offer(ALL) == failures  # none counted twice
    finally:
        await analytics.close()
        await store.close()
