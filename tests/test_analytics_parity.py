"""The dashboard's queries on SQLite (over rollups) and on PostgreSQL (over request_records) give
the same figures for the same records: every query, every grouping, with and without rollups."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from faregate.store import analytics_queries
from faregate.store.analytics import Analytics
from faregate.store.analytics_rows import DIMENSIONS, Dimension, Slice
from faregate.store.feedback import Feedback
from faregate.store.postgres.analytics import PostgresAnalytics
from faregate.store.postgres.feedback import PostgresFeedbackTable
from faregate.store.postgres.rollup import PostgresRollupWriter
from faregate.store.postgres.store import PostgresStore
from faregate.store.protocols import KeyRow
from faregate.store.rows import RECORD_COLUMNS, attempt_summary, record_to_row
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.feedback import SQLiteFeedbackTable
from faregate.store.sqlite.rollup import RollupWriter
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import Attempt, RequestRecord
from servers import PostgresServer, postgres_server  # noqa: F401

pytestmark = pytest.mark.e2e

H = 1_700_000_000 // 3600 * 3600  # an hour boundary
SPAN_S = 30 * 3600  # the records cover 30 hours
N_RECORDS = 600
KEYS = (("k1", "alpha"), ("k2", "beta"), ("k3", "alpha"))  # two keys share the name "alpha"


def _attempts(rng: random.Random, model: str, provider: str, status: int) -> list[Attempt]:
    """The attempt shapes the attempt loop writes, escalations and judge calls included."""
    other = "p3" if provider != "p3" else "p1"
    ok = Attempt(model, provider, "ok", 10.0)
    shapes: list[list[Attempt]] = [
        [ok],
        [ok],
        [Attempt(model, provider, "rate_limited", 5.0, status=429), ok],  # a retry
        [Attempt("C", other, "timeout", 5.0), ok],  # a fallback
        [Attempt("C", other, "escalated", 5.0), ok],  # a cascade step: no failure, no fallback
        [Attempt("C", other, "judge", 5.0), ok],  # a judge's own call: no failure
        [Attempt("C", other, "escalated", 5.0), Attempt("C", other, "judge", 5.0), ok],
        [Attempt(model, provider, "server_error", 5.0, status=500), Attempt("C", other, "empty", 5.0), ok],
    ]
    if status >= 500:
        failure = Attempt(model, provider, "server_error", 5.0, status=502)
        return rng.choice([[failure, failure], [failure, Attempt("C", other, "connect_error", 1.0)], []])
    if status >= 400:
        return []
    return rng.choice(shapes)


def make_records(seed: int = 7) -> list[RequestRecord]:
    rng = random.Random(seed)
    records = []
    for n in range(N_RECORDS):
        at = H + rng.uniform(0, SPAN_S)
        status = rng.choice([200] * 12 + [502, 429, 402, 499])
        model = rng.choice(["A", "B", "C"])
        provider = rng.choice(["p1", "p2", "p3"])
        served = status < 400
        cache = rng.choice(["bypass", "miss", "hit", "semantic-hit"]) if served else "bypass"
        cost = (
            Decimal(rng.randint(0, 5_000_000)) / Decimal(10**9) if served and cache == "miss" else Decimal(0)
        )
        records.append(
            RequestRecord(
                request_id=f"req_{n:04d}",
                created_at=at,
                key_id=rng.choice([k for k, _ in KEYS] + [None]),
                model_requested=rng.choice([model, "auto"]),
                model_used=model if served else None,
                provider=provider if served else None,
                status=status,
                stream=rng.random() < 0.3,
                prompt_tokens=rng.randint(0, 4000),
                completion_tokens=rng.randint(0, 2000) if served else 0,
                cost_usd=cost,
                latency_ms=rng.choice(
                    [rng.uniform(0, 100), rng.uniform(100, 1000), rng.uniform(1000, 20000)]
                ),
                ttft_ms=rng.uniform(10, 900) if rng.random() < 0.4 else None,
                empty_response=served and rng.random() < 0.05,
                error=None if served else rng.choice(["all failed", "Rate_limited 100%", "budget"]),
                attempts=_attempts(rng, model, provider, status),
                route=rng.choice(["chat", "code", None]),
                baseline_cost_usd=cost * 10 + Decimal("0.000000123") if served else Decimal(0),
                cache_status=cache,
                wire=("chat", "messages", "responses")[n % 3],
            )
        )
    # Records are written in batches in arrival order, so ids follow created_at (the latency sample
    # picks ids; both stores number them alike).
    return sorted(records, key=lambda r: r.created_at)


def make_feedback(records: list[RequestRecord]) -> list[Feedback]:
    rng = random.Random(11)
    out = []
    for r in rng.sample(records, 120):
        if r.key_id is None:
            continue
        thumb, rating = rng.choice([("up", None), ("down", None), (None, rng.randint(1, 5))])
        out.append(Feedback(r.request_id, r.key_id, r.created_at + rng.uniform(0, 7200), thumb, rating, "ok"))  # type: ignore[arg-type]
    return out


@dataclass
class Stores:
    lite: SQLiteAnalytics
    pg: PostgresAnalytics
    rollup: RollupWriter
    pg_rollup: PostgresRollupWriter
    lite_store: SQLiteStore
    pg_store: PostgresStore


@pytest.fixture
async def stores(tmp_path: Path, postgres_server: PostgresServer) -> AsyncIterator[Stores]:  # noqa: F811
    url = postgres_server.new_database()
    lite_store = await SQLiteStore.open(tmp_path)
    pg_store = await PostgresStore.open(url)
    records = make_records()
    feedback = make_feedback(records)
    for store in (lite_store, pg_store):
        for n, (key_id, name) in enumerate(KEYS):
            await store.insert_key(KeyRow(key_id, name, f"fg-{key_id}…", f"hash{n}", False, H))
        await store.insert_records(records)
    lite = await SQLiteAnalytics.open(lite_store.path)
    pg = await PostgresAnalytics.open(url)
    for table in (SQLiteFeedbackTable(lite.connection), PostgresFeedbackTable(pg.pool)):
        for f in feedback:
            await table.upsert(f)
    try:
        yield Stores(
            lite,
            pg,
            RollupWriter(lite.connection, chunk=250),
            PostgresRollupWriter(pg.pool, chunk=310),
            lite_store,
            pg_store,
        )
    finally:
        await lite.close()
        await pg.close()
        await lite_store.close()
        await pg_store.close()


def slices() -> list[Slice]:
    end = H + SPAN_S + 1
    return [
        Slice(H, end),  # everything
        Slice(H + 1234.5, H + 20 * 3600 + 17),  # partial hours at both edges
        Slice(H + 600, H + 2400),  # under an hour
        Slice(H, end, model="A"),
        Slice(H, end, provider="p2"),
        Slice(H, end, route="code"),
        Slice(H, end, keys=("k1", "k3")),
        Slice(H + 5000, end - 5000, model="B", route="chat"),  # two dimensions: raw on SQLite too
        Slice(H, end, keys=()),  # a key name that matches nothing
    ]


Query = Callable[[Analytics], Awaitable[Any]]


def queries(s: Slice) -> dict[str, Query]:
    out: dict[str, Query] = {
        "totals": lambda a: a.totals(s),
        "series 1h": lambda a: a.series(s, 3600),
        "series 15m": lambda a: a.series(s, 900),
        "series 1d": lambda a: a.series(s, 86400),
        "latency": lambda a: a.latency(s, None),
        "reliability": lambda a: a.reliability(s, None),
        "failed attempts": lambda a: a.failed_attempts_by_offer(s, 50),
        "feedback": lambda a: a.feedback(s, None),
        "feedback by time": lambda a: a.feedback(s, None, by_feedback_time=True),
    }
    for by in DIMENSIONS:
        out |= per_dimension(s, by)
    return out


def per_dimension(s: Slice, by: Dimension) -> dict[str, Query]:
    return {
        f"breakdown by {by}": lambda a: a.breakdown(s, by),
        f"breakdown by {by}, top 2": lambda a: a.breakdown(s, by, 2),
        f"breakdown by {by}, top 2 and how many": lambda a: a.top_groups(s, by, 2),
        f"latency by {by}": lambda a: a.latency(s, by),
        f"reliability by {by}": lambda a: a.reliability(s, by),
        f"feedback by {by}": lambda a: a.feedback(s, by),
    }


async def assert_same(stores: Stores) -> None:
    for s in slices():
        for name, query in queries(s).items():
            assert await query(stores.lite) == await query(stores.pg), f"{name} of {s}"


async def test_every_query_gives_the_same_figures_with_and_without_rollups(stores: Stores) -> None:
    totals = await stores.pg.totals(Slice(H, H + SPAN_S + 1))
    assert totals.requests == N_RECORDS and totals.cost > 0 and totals.cache_hits > 0
    (overall,) = await stores.pg.reliability(Slice(H, H + SPAN_S + 1), None)
    assert overall.fallbacks > 0 and overall.retried > 0 and overall.errors > 0
    await assert_same(stores)  # both read request_records only
    assert await stores.rollup.step() == 250
    assert await stores.pg_rollup.step() == 310
    await assert_same(stores)  # part rolled up (not the same part), the rest read from the records
    await stores.rollup.catch_up()
    await assert_same(stores)  # all rolled up on SQLite, part on PostgreSQL
    assert await stores.pg_rollup.catch_up() == N_RECORDS - 310
    await assert_same(stores)  # all rolled up on both


async def test_escalations_and_judge_calls_are_neither_failures_nor_fallbacks(stores: Stores) -> None:
    for a in (stores.lite, stores.pg):
        outcomes = {o for _, _, o, _ in await a.failed_attempts_by_offer(Slice(H, H + SPAN_S + 1), 100)}
        assert outcomes == {"rate_limited", "timeout", "server_error", "empty", "connect_error"}


async def test_latency_over_the_same_sample(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analytics_queries, "SAMPLE_SIZE", 50)  # both stores' queries
    s = Slice(H, H + SPAN_S + 1)
    for by in (None, *DIMENSIONS):
        lite, pg = await stores.lite.latency(s, by), await stores.pg.latency(s, by)
        assert lite == pg and pg[1] > 1


async def test_recent_requests_search_and_paging(stores: Stores) -> None:
    s = Slice(H, H + SPAN_S + 1)
    for search in (None, "p2", "P2", "alpha", "req_0042", "rate_limited 100%", "_", "%", "hit", "nothing"):
        lite = await stores.lite.recent(s, search=search, limit=500)
        assert lite == await stores.pg.recent(s, search=search, limit=500), search
    assert len(await stores.pg.recent(s, search="alpha", limit=1000)) > 0
    # Paging: each page starts before the last row of the one before, on both stores alike.
    before: float | None = None
    before_id: str | None = None
    pages = 0
    while pages < 100:
        lite = await stores.lite.recent(s, limit=37, before=before, before_id=before_id)
        assert lite == await stores.pg.recent(s, limit=37, before=before, before_id=before_id)
        pages += 1
        if len(lite) < 37:
            break
        before, before_id = lite[-1]["created_at"], lite[-1]["request_id"]
    assert pages == N_RECORDS // 37 + 1
    # Records that share the time of the last row shown: the next page goes on after it.
    tied = [replace(r, request_id=f"tied_{n}", created_at=H + 0.5) for n, r in enumerate(make_records()[:5])]
    for store in (stores.lite_store, stores.pg_store):
        await store.insert_records(tied)
    edge = Slice(H, H + 1)
    for analytics in (stores.lite, stores.pg):
        first = await analytics.recent(edge, limit=2)
        rest = await analytics.recent(edge, limit=10, before=H + 0.5, before_id=first[-1]["request_id"])
        assert [r["request_id"] for r in first + rest] == [f"tied_{n}" for n in (4, 3, 2, 1, 0)]


async def test_search_ignores_case_beyond_ascii_on_both_stores(stores: Stores) -> None:
    # SQLite's LIKE folds ASCII case only, PostgreSQL's ILIKE all of it: "ÉCOLE" found "école" on
    # PostgreSQL and not on SQLite.
    await _search_beyond_ascii(stores.lite_store, stores.lite, stores.pg_store, stores.pg)


async def test_search_ignores_case_beyond_ascii_on_a_postgres_database_of_locale_c(
    stores: Stores,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    # ILIKE folds case by the database's LC_CTYPE: "C" (a common choice, for speed) folds ASCII
    # only, so "ÉCOLE" found "école" on SQLite and not on such a database.
    name = "fg_c_" + secrets.token_hex(6)
    postgres_server.psql(f"CREATE DATABASE {name} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    url = postgres_server.url(name)
    pg_store = await PostgresStore.open(url)
    pg = await PostgresAnalytics.open(url)
    try:
        for n, (key_id, key_name) in enumerate(KEYS):
            await pg_store.insert_key(KeyRow(key_id, key_name, f"fg-{key_id}…", f"hash{n}", False, H))
        await pg_store.insert_records(make_records())
        await _search_beyond_ascii(stores.lite_store, stores.lite, pg_store, pg)
    finally:
        await pg.close()
        await pg_store.close()


async def _search_beyond_ascii(
    lite_store: SQLiteStore, lite: SQLiteAnalytics, pg_store: PostgresStore, pg: PostgresAnalytics
) -> None:
    school = replace(
        make_records()[0],
        request_id="req_school",
        model_requested="école-7b",
        key_id="k-ü",
        created_at=H + 0.25,
    )
    # Lower case by character, as towlower: İ is i (not i + a dot), a final Σ is σ (not ς).
    others = [
        replace(school, request_id=f"req_{m}", model_requested=m, key_id=None) for m in ("İZMİR", "ΟΔΟΣ")
    ]
    for store in (lite_store, pg_store):
        await store.insert_key(KeyRow("k-ü", "Über", "fg-k-ü…", "hash-ü", False, H))
        await store.insert_records([school, *others])
    s = Slice(H, H + 1)
    for search, found in (
        ("ÉCOLE", ["req_school"]),
        ("école", ["req_school"]),
        ("üBER", ["req_school"]),
        ("ÉCOLÈ", []),
        ("izmir", ["req_İZMİR"]),
        ("οδοσ", ["req_ΟΔΟΣ"]),
    ):
        for a in (lite, pg):
            assert [r["request_id"] for r in await a.recent(s, search=search)] == found, (a, search)


async def test_keys_and_first_record(stores: Stores) -> None:
    for a in (stores.lite, stores.pg):
        assert await a.resolve_keys("alpha") in (("k1", "k3"), ("k3", "k1"))
        assert await a.resolve_keys("gone") == ("gone",)
        assert await a.key_labels(["k2", "k9"]) == {"k2": "beta (fg-k2…)"}
    assert await stores.lite.first_record_at() == await stores.pg.first_record_at()


async def test_both_stores_keep_the_wire_a_request_came_in_on(stores: Stores) -> None:
    for request_id, wire in (("req_0000", "chat"), ("req_0001", "messages"), ("req_0002", "responses")):
        for store in (stores.lite_store, stores.pg_store):
            found = await store.get_record(request_id)
            assert found is not None and found.wire == wire


async def test_a_later_score_replaces_the_first_on_postgresql(stores: Stores) -> None:
    table = PostgresFeedbackTable(stores.pg.pool)
    await table.upsert(Feedback("req_0001", "k1", H + 1, thumb="up"))
    await table.upsert(Feedback("req_0001", "k1", H + 2, rating=4, comment="better"))
    assert await table.get("req_0001") == Feedback("req_0001", "k1", H + 2, None, 4, "better")
    assert await table.get("req_none") is None


async def test_rollup_steps_of_several_instances_count_every_record_once(stores: Stores) -> None:
    """Four instances step the PostgreSQL rollup while two more write records: afterwards every
    record is in the sums exactly once, and the figures equal SQLite's for the same records."""
    late = [
        RequestRecord(
            request_id=f"late_{n:04d}",
            created_at=H + (n * 97) % SPAN_S,  # into hours that are rolled up already
            key_id="k2",
            model_requested="A",
            model_used="A",
            provider="p1",
            status=200,
            stream=False,
            cost_usd=Decimal("0.000001234"),
            attempts=[Attempt("A", "p1", "timeout", 1.0), Attempt("A", "p2", "ok", 1.0)],
            route="chat",
        )
        for n in range(400)
    ]
    writers = [PostgresRollupWriter(stores.pg.pool, chunk=37) for _ in range(4)]
    await stores.pg_rollup.catch_up()

    async def write(batch: list[RequestRecord]) -> None:
        for i in range(0, len(batch), 20):
            await stores.pg_store.insert_records(batch[i : i + 20])
            await asyncio.sleep(0)

    async def roll(writer: PostgresRollupWriter) -> None:
        for _ in range(200):
            await writer.step()
            await asyncio.sleep(0)

    await asyncio.gather(write(late[::2]), write(late[1::2]), *(roll(w) for w in writers))
    await stores.pg_rollup.catch_up()
    await stores.lite_store.insert_records(late)
    await stores.rollup.catch_up()
    rolled = await stores.pg.pool.fetchval("SELECT SUM(requests) FROM rollup_hourly WHERE dim = ''")
    assert rolled == N_RECORDS + len(late)
    assert await stores.pg.pool.fetchval("SELECT COUNT(*) FROM rollup_pending") == 0
    await assert_same(stores)


async def test_a_postgres_store_rolled_up_before_the_wire_was_summed_is_rolled_up_again(
    tmp_path: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """PostgreSQL migration 8 (SQLite's 15 in test_analytics.py): hours rolled up by an earlier
    version have no per-wire sums, so every record is pending again; the per-wire figures are
    the SQLite store's, before and after the rollup catches up."""
    from faregate.store.postgres.migrations import PG_MIGRATIONS

    url = postgres_server.new_database()
    records = make_records()
    # Every migration but 8 (the records' columns of later ones are what this rollup reads).
    old = await PostgresStore.open(url, migrations=[m for m in PG_MIGRATIONS if m.version != 8])
    await old.insert_records(records)
    pg = await PostgresAnalytics.open(url)
    await PostgresRollupWriter(pg.pool, chunk=310).catch_up()
    # As an earlier version left it: its sums per model, provider, key and route only.
    await pg.pool.execute("DELETE FROM rollup_hourly WHERE dim = 'wire'")
    await old.close()
    lite_store = await SQLiteStore.open(tmp_path)
    await lite_store.insert_records(records)
    lite = await SQLiteAnalytics.open(lite_store.path)
    new = await PostgresStore.open(url)
    try:
        whole = Slice(H, H + SPAN_S + 1)
        expected = await lite.breakdown(whole, "wire", 10)
        assert {g.group for g in expected} == {"chat", "messages", "responses"}
        assert await pg.breakdown(whole, "wire", 10) == expected
        assert await PostgresRollupWriter(pg.pool, chunk=310).catch_up() == len(records)
        assert await pg.breakdown(whole, "wire", 10) == expected
        assert await pg.breakdown(whole, "model", 10) == await lite.breakdown(whole, "model", 10)
    finally:
        await lite.close()
        await lite_store.close()
        await pg.close()
        await new.close()


async def test_postgres_migration_9_fills_old_records_as_the_rollup_counted_them(
    tmp_path: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """Records written before PostgreSQL migration 9 (SQLite's 16 in test_analytics.py) get their
    attempts' summary from their JSON, by the SQL the rollup ran on every record until then: the
    values attempt_summary gives new records, so every figure equals the SQLite store's."""
    from faregate.store.postgres.migrations import PG_MIGRATIONS

    url = postgres_server.new_database()
    records = make_records()
    old = await PostgresStore.open(url, migrations=[m for m in PG_MIGRATIONS if m.version < 9])
    n = len(RECORD_COLUMNS)
    pg = await PostgresAnalytics.open(url)
    await pg.pool.copy_records_to_table(
        "request_records", records=[record_to_row(r)[:n] for r in records], columns=list(RECORD_COLUMNS)
    )
    await old.close()
    new = await PostgresStore.open(url)
    lite_store = await SQLiteStore.open(tmp_path)
    await lite_store.insert_records(records)
    lite = await SQLiteAnalytics.open(lite_store.path)
    try:
        rows = await pg.pool.fetch(
            "SELECT request_id, attempt_count, fell_back, retried FROM request_records"
        )
        expected = {r.request_id: attempt_summary(r.attempts) for r in records}
        assert {row[0]: tuple(row[1:]) for row in rows} == expected
        assert {s[1] for s in expected.values()} == {0, 1} and {s[2] for s in expected.values()} == {0, 1}
        whole = Slice(H, H + SPAN_S + 1)
        for by in (None, "provider", "model"):
            assert await pg.reliability(whole, by) == await lite.reliability(whole, by)
        await PostgresRollupWriter(pg.pool, chunk=310).catch_up()
        await RollupWriter(lite.connection, chunk=250).catch_up()
        for by in (None, "provider", "model"):
            assert await pg.reliability(whole, by) == await lite.reliability(whole, by)
        assert await pg.failed_attempts_by_offer(whole) == await lite.failed_attempts_by_offer(whole)
    finally:
        await lite.close()
        await lite_store.close()
        await pg.close()
        await new.close()


async def test_a_postgres_store_rolled_up_when_refusals_counted_as_fallbacks_is_rolled_up_again(
    tmp_path: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """PostgreSQL migration 13 (SQLite's 20 in test_analytics.py): hours rolled up before the
    fallback and retry sums were of the requests taken on count a 4xx that fell back; every record
    is pending again, and the figures are the SQLite store's, before and after the catch-up."""
    from faregate.store.postgres.migrations import PG_MIGRATIONS

    url = postgres_server.new_database()
    hour = H + 3 * 3600
    refused = RequestRecord(
        request_id="req_refused", created_at=hour + 60, key_id="k1", model_requested="A", model_used=None,
        provider=None, status=400,
        stream=False, attempts=[Attempt("A", "p1", "timeout", 5.0), Attempt("A", "p1", "timeout", 5.0),
                                Attempt("B", "p2", "rejected", 5.0, status=400)],
    )  # fmt: skip
    records = sorted([*make_records(), refused], key=lambda r: r.created_at)
    old = await PostgresStore.open(url, migrations=[m for m in PG_MIGRATIONS if m.version < 13])
    await old.insert_records(records)
    pg = await PostgresAnalytics.open(url)
    await PostgresRollupWriter(pg.pool, chunk=310).catch_up()
    # As a version that counted the refusal's fallback and retry rolled its hour up.
    await pg.pool.execute(
        "UPDATE rollup_hourly SET fallbacks = fallbacks + 1, retried = retried + 1"
        " WHERE dim = '' AND bucket = $1",
        hour,
    )
    await old.close()
    lite_store = await SQLiteStore.open(tmp_path)
    await lite_store.insert_records(records)
    lite = await SQLiteAnalytics.open(lite_store.path)
    whole = Slice(H, H + SPAN_S + 1)
    expected = await lite.reliability(whole, None)
    assert await pg.reliability(whole, None) != expected  # what the dashboard read
    new = await PostgresStore.open(url)
    try:
        assert await pg.reliability(whole, None) == expected
        assert await PostgresRollupWriter(pg.pool, chunk=310).catch_up() == len(records)
        assert await pg.reliability(whole, None) == expected
        assert await pg.failed_attempts_by_offer(whole) == await lite.failed_attempts_by_offer(whole)
    finally:
        await lite.close()
        await lite_store.close()
        await pg.close()
        await new.close()


async def test_a_breakdown_by_key_over_more_keys_than_a_statement_takes_parameters(stores: Stores) -> None:
    """`faregate usage --by key` lists every key of the range and labels each by name: more keys
    than one PostgreSQL statement takes parameters (32,767) are labelled all the same."""
    many = 33_000
    at = H - 86400  # a day of its own, before the fixture's records
    records = [
        RequestRecord(
            request_id=f"many_{n:05d}",
            created_at=at + n / 100,
            key_id="k2" if n == 0 else f"user_{n:05d}",
            model_requested="A",
            model_used="A",
            provider="p1",
            status=200,
            stream=False,
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=Decimal("0.000001"),
        )
        for n in range(many)
    ]
    for store in (stores.lite_store, stores.pg_store):
        await store.insert_records(records)
    s = Slice(at, H)
    for a in (stores.lite, stores.pg):
        groups = await a.breakdown(s, "key", 2**62)
        assert len(groups) == many
        assert {g.group: g.label for g in groups if g.label is not None} == {"k2": "beta (fg-k2…)"}


async def test_a_daily_spend_alert_sees_every_key_past_its_threshold(stores: Stores) -> None:
    """The daily_spend_usd alert measured only the 10,000 keys that spent most today: a `below` rule
    never saw the keys that spent least, and with more keys past an `above` one those out of the
    top 10,000 were never alerted (a firing one resolved). Every key of the day is measured now,
    their names looked up in statements PostgreSQL takes (under 32,767 parameters each)."""
    from faregate.config import AlertRule
    from faregate.telemetry.alert_values import breaches, measure

    many = 33_000
    day = (H // 86400 - 1) * 86400  # a day of its own, before the fixture's records
    records = [
        RequestRecord(
            request_id=f"spend_{n:05d}",
            created_at=day + n / 1000,
            key_id=f"user_{n:05d}",
            model_requested="A",
            model_used="A",
            provider="p1",
            status=200,
            stream=False,
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=Decimal(n + 1) / 1000,
        )
        for n in range(many)
    ]
    for store in (stores.lite_store, stores.pg_store):
        await store.insert_records(records)
    least = AlertRule(name="idle", metric="daily_spend_usd", below=0.0035)
    most = AlertRule(name="spend", metric="daily_spend_usd", above=0.001)
    for a in (stores.lite, stores.pg):
        below = [m.subject for m in await measure(least, a, day + 3600) if breaches(least, m)]
        assert sorted(below) == ["user_00000", "user_00001", "user_00002"]
        above = [m.subject for m in await measure(most, a, day + 3600) if breaches(most, m)]
        assert len(above) == many - 1
