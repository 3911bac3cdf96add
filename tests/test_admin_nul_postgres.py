"""A NUL character in a filter, a search, a key id or a key name is the client's error (400) on the
shared store as on the embedded one: PostgreSQL's text cannot hold one and refused the whole
statement (a 500), while SQLite took it and answered. So is one in a feedback comment."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import GATEWAY, build_gateway, create_app
from faregate.types import RequestRecord
from harness import MASTER_KEY
from servers import SharedUrls, postgres_server, redis_server, shared_urls  # noqa: F401

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(params=["sqlite", "postgres"])
async def client(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shared_urls: SharedUrls,  # noqa: F811
) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    store: dict[str, Any] = {"path": str(tmp_path / "store")}
    if request.param == "postgres":
        store |= {"postgres_url": shared_urls.postgres, "redis_url": shared_urls.redis}
    settings = load_settings(
        overrides={"store": store, "catalog": {"broad": False}, "accounts": {"enabled": True}}
    )
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("GET", "/admin/dashboard/requests?q=a%00b", None, "q"),
        ("GET", "/admin/dashboard/summary?model=a%00b", None, "model"),
        ("GET", "/admin/dashboard/breakdown?provider=a%00b", None, "provider"),
        ("GET", "/admin/dashboard/series?route=a%00b", None, "route"),
        ("GET", "/admin/dashboard/summary?key=a%00b", None, "key"),
        ("GET", "/admin/keys/a%00b", None, "id"),
        ("DELETE", "/admin/keys/a%00b", None, "id"),
        ("GET", "/admin/keys?limit=5&after=a%00b", None, "after"),
        ("POST", "/admin/keys", {"name": "a\x00b"}, "name"),
    ],
)
async def test_a_nul_character_is_a_400_on_both_stores(
    client: TestClient[Any, Any], method: str, path: str, body: Any, param: str
) -> None:
    response = await client.request(method, path, headers=ADMIN, json=body)
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_a_feedback_comment_with_a_nul_character_is_a_400_on_both_stores(
    client: TestClient[Any, Any],
) -> None:
    # PostgreSQL refused the upsert (a 500) where SQLite stored the comment.
    created = await client.post("/admin/keys", headers=ADMIN, json={"name": "fb"})
    key = await created.json()
    request_id = "req_" + "a" * 32
    await client.server.app[GATEWAY].store.insert_records(
        [RequestRecord(request_id, time.time(), key["id"], "gpt-4o", "gpt-4o", "sim", 200, False)]
    )
    body = {"request_id": request_id, "score": "up", "comment": "a\x00b"}
    auth = {"Authorization": f"Bearer {key['api_key']}"}
    response = await client.post("/v1/feedback", json=body, headers=auth)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["param"] == "comment"


async def test_a_request_for_a_model_named_with_a_nul_is_recorded_on_both_stores(
    client: TestClient[Any, Any],
) -> None:
    # The 404's record holds the model name as asked: PostgreSQL refused it and it was dropped.
    created = await (await client.post("/admin/keys", headers=ADMIN, json={"name": "nul"})).json()
    auth = {"Authorization": f"Bearer {created['api_key']}"}
    body = {"model": "a\x00b", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status == 404, await response.text()
    gateway = client.server.app[GATEWAY]
    await gateway.records.flush()
    assert await gateway.store.count_records() == 1
    record = await gateway.store.get_record(response.headers["x-faregate-request-id"])
    assert record is not None and record.model_requested == "a\ufffdb" and record.status == 404
