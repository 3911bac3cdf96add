"""/admin/dashboard/requests pages back through every record once, also when several records share
a timestamp at the edge of a page (their order is the time, then the order they were written)."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
AT = 1_700_000_000.25


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    store = await SQLiteStore.open(tmp_path)
    # r0 alone, then r1..r5 written in one batch with the same timestamp, then r6 alone.
    times = [AT - 1, *([AT] * 5), AT + 1]
    await store.insert_records(
        [
            RequestRecord(request_id=f"r{n}", created_at=at, key_id=None, model_requested="A",
                          model_used="A", provider="p", status=200, stream=False)
            for n, at in enumerate(times)
        ]
    )  # fmt: skip
    await store.close()
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as test_client:
        yield test_client


@pytest.mark.parametrize("limit", [1, 2, 3, 4])
async def test_paging_back_shows_every_request_once(client: TestClient[Any, Any], limit: int) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"since": AT - 10, "until": AT + 10, "limit": limit}
    for _ in range(10):
        response = await client.get("/admin/dashboard/requests", params=params, headers=ADMIN)
        assert response.status == 200, await response.text()
        page = await response.json()
        seen += [row["request_id"] for row in page["rows"]]
        if page["next_before"] is None:
            break
        # The cursor: the time and the request id of the last row shown.
        params |= {"before": repr(page["next_before"]), "before_id": page.get("next_before_id") or ""}
    assert seen == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]


async def test_an_iso_time_with_a_plus_offset_written_as_is_in_the_url(client: TestClient[Any, Any]) -> None:
    """since=2023-11-14T23:13:10+01:00 typed in a URL (curl, a browser): the query decodes its '+'
    to a space, and the time was refused as not ISO 8601 ('...T23:13:10 01:00'), though the docs
    give such an offset. The space before an offset at the end is read as the '+' it was."""
    url = "/admin/dashboard/summary?since=2023-11-14T23:13:10+01:00&until=2023-11-14T23:13:30+0100"
    response = await client.get(url, headers=ADMIN)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["since"], body["until"]) == (AT - 10.25, AT + 9.75)
    assert body["requests"] == 7
    # A space between the date and the time (ISO 8601 allows it) is still that.
    response = await client.get("/admin/dashboard/summary?since=2023-11-14 22:13:10", headers=ADMIN)
    assert response.status == 200 and (await response.json())["since"] == AT - 10.25


async def test_a_cut_breakdown_says_how_many_groups_there_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard asks for the top 20 keys: the answer says how many there are in all, so the
    page can tell a cut list from a whole one (20 rows read as every key)."""
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(overrides={"store": {"path": str(tmp_path)}, "catalog": {"broad": False}})
    store = await SQLiteStore.open(tmp_path)
    await store.insert_records(
        [
            RequestRecord(request_id=f"r{n}", created_at=AT, key_id=f"k{n % 5}", model_requested="A",
                          model_used="A", provider="p", status=200, stream=False,
                          cost_usd=Decimal(n % 5) / 1000)
            for n in range(10)
        ]
    )  # fmt: skip
    await store.close()
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as client:
        since = {"since": AT - 10, "until": AT + 10}
        response = await client.get(
            "/admin/dashboard/breakdown", params={**since, "by": "key", "limit": 2}, headers=ADMIN
        )
        body = await response.json()
        assert [row["group"] for row in body["rows"]] == ["k4", "k3"] and body["groups"] == 5
        response = await client.get(
            "/admin/dashboard/breakdown", params={**since, "by": "model"}, headers=ADMIN
        )
        body = await response.json()
        assert len(body["rows"]) == 1 and body["groups"] == 1
        # An empty range: no group.
        response = await client.get(
            "/admin/dashboard/breakdown",
            params={"since": AT + 100, "until": AT + 200, "by": "key"},
            headers=ADMIN,
        )
        body = await response.json()
        assert body["rows"] == [] and body["groups"] == 0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("summary?range=2y", "range"),
        ("breakdown?by=colour", "by"),
        ("latency?by=colour", "by"),
        ("summary?since=yesterday", "since"),
        ("summary?since=2000000000&until=1000000000", "since"),
        ("requests?limit=many", "limit"),
    ],
)
async def test_a_bad_query_parameter_is_named_in_the_error(
    client: TestClient[Any, Any], query: str, param: str
) -> None:
    """Every refused parameter of the dashboard's JSON endpoints is the error's `param`, as OpenAI's
    errors name the field at fault (`range`, `by` and a `since` after `until` said null, while a
    bad `since` or `limit` named itself)."""
    response = await client.get(f"/admin/dashboard/{query}", headers=ADMIN)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == param
