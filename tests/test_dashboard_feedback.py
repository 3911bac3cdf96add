"""/admin/dashboard/feedback puts each group's requests and spend beside its scores, whatever the
group's rank by spend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from faregate.store.feedback import Feedback
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.feedback import SQLiteFeedbackTable
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import RequestRecord
from harness import MASTER_KEY

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
AT = 1_700_000_000.0
# More keys than the dashboard's breakdown shows at most (1,000), each spending more than "quiet".
BUSY_KEYS = 1_000


def record(n: int, key_id: str, cost: str) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{n}",
        created_at=AT + n / 1000,
        key_id=key_id,
        model_requested="A",
        model_used="A",
        provider="p",
        status=200,
        stream=False,
        cost_usd=Decimal(cost),
    )


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    store = await SQLiteStore.open(tmp_path)
    busy = [record(n, f"busy{n:04d}", "0.01") for n in range(BUSY_KEYS)]
    await store.insert_records([*busy, record(BUSY_KEYS, "quiet", "0.000002")])
    reads = await SQLiteAnalytics.open(store.path)
    await SQLiteFeedbackTable(reads.connection).upsert(Feedback(f"r{BUSY_KEYS}", "quiet", AT + 5, "down"))
    await reads.close()
    await store.close()
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as test_client:
        yield test_client


async def test_a_group_outside_the_top_spenders_shows_its_own_requests_and_spend(
    client: TestClient[Any, Any],
) -> None:
    params = {"since": AT - 10, "until": AT + 10, "by": "key"}
    response = await client.get("/admin/dashboard/feedback", params=params, headers=ADMIN)
    assert response.status == 200, await response.text()
    (row,) = (await response.json())["rows"]
    assert (row["group"], row["feedback"], row["thumbs_down"]) == ("quiet", 1, 1)
    assert (row["requests"], row["spend_usd"]) == (1, "0.000002")
