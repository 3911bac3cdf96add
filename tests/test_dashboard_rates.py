"""The dashboard's error rate is of the requests the gateway took on: a client's own 4xx refusals
(a loop on its rate limit, a bad key) neither count as errors nor dilute an upstream's failures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import Attempt, RequestRecord
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


Get = Callable[..., Awaitable[dict[str, Any]]]


@asynccontextmanager
async def dashboard_over(
    records: list[RequestRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Get]:
    """The dashboard's API in process over a store of `records`: a GET of one of its views (its
    path and query parameters) over the records' time, as the admin."""
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    store = await SQLiteStore.open(tmp_path)
    await store.insert_records(records)
    await store.close()
    gateway = await build_gateway(settings)
    span = {"since": AT - 10, "until": AT + 10}
    async with TestClient(TestServer(create_app(gateway))) as client:

        async def get(path: str, **params: Any) -> dict[str, Any]:
            response = await client.get(f"/admin/dashboard/{path}", params={**span, **params}, headers=ADMIN)
            assert response.status == 200, await response.text()
            return dict(await response.json())

        yield get


async def test_refusals_are_left_out_of_the_error_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 served (1 failed upstream: 502), 16 refused by the key's rate limit.
    records = [record(n, s) for n, s in enumerate([200, 200, 200, 502] + [429] * 16)]
    async with dashboard_over(records, tmp_path, monkeypatch) as get:
        summary = await get("summary")
        assert (summary["requests"], summary["errors"], summary["client_errors"]) == (20, 1, 16)
        assert summary["error_rate"] == 25.0  # 1 of the 4 taken on, not 1 of 20 (5%)
        (row,) = (await get("breakdown", by="key"))["rows"]
        assert row["error_rate"] == 25.0
        by_provider = {r["group"]: r for r in (await get("reliability", by="provider"))["rows"]}
        assert by_provider["p"]["error_rate"] == 25.0
        # Requests that were all refused have no error rate to speak of.
        assert by_provider[None]["error_rate"] is None


async def test_fallback_and_retry_rates_are_of_the_requests_taken_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the error rate: a client's flood of 4xx refusals diluted the fallback and retry rates (a
    quarter of the served requests falling back read as 5%). A request that fell back and still
    ended in a 4xx (the last upstream refused the input) is a refusal, in neither count."""
    records = [record(n, s) for n, s in enumerate([200, 200, 200, 502] + [429] * 15)]
    records[0].attempts = [Attempt("A", "p", "server_error", 5.0), Attempt("A", "q", "ok", 5.0)]
    records[1].attempts = [Attempt("A", "p", "server_error", 5.0), Attempt("A", "p", "ok", 5.0)]
    refused = record(99, 400)
    refused.attempts = [
        Attempt("A", "p", "server_error", 5.0), Attempt("A", "p", "server_error", 5.0),
        Attempt("A", "q", "rejected", 5.0, status=400),
    ]  # fmt: skip
    async with dashboard_over([*records, refused], tmp_path, monkeypatch) as get:
        summary = await get("summary")
        assert (summary["requests"], summary["client_errors"]) == (20, 16)
        assert (summary["fallbacks"], summary["retried"]) == (1, 1)
        assert (summary["fallback_rate"], summary["retry_rate"]) == (25.0, 25.0)  # of the 4 taken on
        (row,) = [r for r in (await get("reliability", by="key"))["rows"] if r["group"] == "k"]
        assert (row["fallback_rate"], row["retry_rate"]) == (25.0, 25.0)


async def test_the_empty_answer_rate_is_of_the_requests_taken_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the error and fallback rates: one blank answer in 4 served, with 16 refusals beside them,
    read as 5%."""
    records = [record(n, s) for n, s in enumerate([200, 200, 200, 502] + [429] * 16)]
    records[0].empty_response = True
    async with dashboard_over(records, tmp_path, monkeypatch) as get:
        summary = await get("summary")
        assert (summary["empty_responses"], summary["empty_rate"]) == (1, 25.0)
        (row,) = (await get("breakdown", by="key"))["rows"]
        assert row["empty_rate"] == 25.0
        by_provider = {r["group"]: r for r in (await get("reliability", by="provider"))["rows"]}
        assert by_provider["p"]["empty_rate"] == 25.0
