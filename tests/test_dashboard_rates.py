"""The dashboard's error rate is of the requests the gateway took on: a client's own 4xx refusals
(a loop on its rate limit, a bad key) neither count as errors nor dilute an upstream's failures."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import RequestRecord
from harness import MASTER_KEY

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
AT = 1_700_000_000.0


def record(n: int, status: int) -> RequestRecord:
    served = status != 429
    return RequestRecord(
        request_id=f"r{n}", created_at=AT, key_id="k", model_requested="A",
        model_used="A" if served else None, provider="p" if served else None, status=status, stream=False,
        cost_usd=Decimal("0.001") if status == 200 else Decimal(0),
    )  # fmt: skip


async def test_refusals_are_left_out_of_the_error_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    store = await SQLiteStore.open(tmp_path)
    # 4 served (1 failed upstream: 502), 16 refused by the key's rate limit.
    await store.insert_records([record(n, s) for n, s in enumerate([200, 200, 200, 502] + [429] * 16)])
    await store.close()
    gateway = await build_gateway(settings)
    span = {"since": AT - 10, "until": AT + 10}

    async def get(path: str, **params: Any) -> dict[str, Any]:
        response = await client.get(f"/admin/dashboard/{path}", params={**span, **params}, headers=ADMIN)
        assert response.status == 200, await response.text()
        return dict(await response.json())

    async with TestClient(TestServer(create_app(gateway))) as client:
        summary = await get("summary")
        assert (summary["requests"], summary["errors"], summary["client_errors"]) == (20, 1, 16)
        assert summary["error_rate"] == 25.0  # 1 of the 4 taken on, not 1 of 20 (5%)
        (row,) = (await get("breakdown", by="key"))["rows"]
        assert row["error_rate"] == 25.0
        by_provider = {r["group"]: r for r in (await get("reliability", by="provider"))["rows"]}
        assert by_provider["p"]["error_rate"] == 25.0
        # Requests that were all refused have no error rate to speak of.
        assert by_provider[None]["error_rate"] is None
