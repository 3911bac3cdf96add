"""A request record holding a NUL character is kept, and reads back the same, on both stores.

PostgreSQL's text cannot hold U+0000 (nor can its jsonb hold a \\u0000 escape), so a record whose
client-chosen model name carried one (a 404 for "a\\x00b") was refused and dropped there, while
SQLite kept it: "no request unrecorded" held on one store only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate.store.postgres.store import PostgresStore
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import Attempt, RequestRecord
from servers import PostgresServer, postgres_server  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_server: PostgresServer,  # noqa: F811
) -> AsyncIterator[SQLiteStore | PostgresStore]:
    opened: SQLiteStore | PostgresStore
    if request.param == "postgres":
        opened = await PostgresStore.open(postgres_server.new_database())
    else:
        opened = await SQLiteStore.open(tmp_path / "store")
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_record_with_nul_characters_is_kept_alike_on_both_stores(
    store: SQLiteStore | PostgresStore,
) -> None:
    record = RequestRecord(
        request_id="r-nul",
        created_at=1_900_000_000.0,
        key_id="k\x00",
        model_requested="a\x00b",
        model_used=None,
        provider=None,
        status=404,
        stream=False,
        error="model 'a\x00b' not found",
        attempts=[Attempt(model="m\x00", provider="sim", outcome="error", latency_ms=1.0, detail="d\x00")],
        route="r\x00",
    )
    assert await store.insert_records([record]) == 1
    stored = await store.get_record("r-nul")
    assert stored is not None
    # Each NUL reads back as U+FFFD on either store: visibly a character that was lost.
    assert (stored.key_id, stored.model_requested, stored.error, stored.route) == (
        "k\ufffd",
        "a\ufffdb",
        "model 'a\ufffdb' not found",
        "r\ufffd",
    )
    assert (stored.attempts[0].model, stored.attempts[0].detail) == ("m\ufffd", "d\ufffd")
